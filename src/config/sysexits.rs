//! The exit statuses of `pluto2`, from BSD's `sysexits.h`, so that systemd
//! (`RestartPreventExitStatus=`) and scripts can tell "fix the setting" from
//! "try again later" without reading the message. README.md has the table.
//!
//! A file of its own because every edge of the program (`main`, `daemon`,
//! `check`, `pki_cli`, `admin`) exits with these numbers, not only `config`.

/// A flag or its value is wrong.
pub const USAGE: u8 = 64;
/// An input file holds something else than expected.
pub const DATAERR: u8 = 65;
/// An input file is missing or cannot be read.
pub const NOINPUT: u8 = 66;
/// A resource pluto2 needs is not available (the listen address).
pub const UNAVAILABLE: u8 = 69;
/// A fault of pluto2 itself or of its runtime.
pub const SOFTWARE: u8 = 70;
/// A file in the data directory cannot be created.
pub const CANTCREAT: u8 = 73;
/// Reading or writing a file failed.
pub const IOERR: u8 = 74;
/// Temporary: trying again later may work (another pluto2 holds the data directory).
pub const TEMPFAIL: u8 = 75;
/// The process lacks a privilege it needs (a port below 1024).
pub const NOPERM: u8 = 77;
/// The data directory holds state this pluto2 cannot use.
pub const CONFIG: u8 = 78;
