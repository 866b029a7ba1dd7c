//! `pluto2 testnet`: a whole local network in one command, for trying and testing pluto2.

pub mod tor;
