//! A DNS server over TCP (RFC 1035 §4.2.2 framing) for tests, answering MX
//! queries from a table and recording every query it gets. With
//! [`DnsServer::start_with_udp`] it also answers on UDP at the same port, as
//! a Tor exit's resolver (eventdns asks over UDP only) needs.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

#[derive(Clone, Debug)]
pub enum Zone {
    /// MX records (preference, exchange); `(0, ".")` is a null MX.
    Mx(Vec<(u16, &'static str)>),
    /// The name exists but has no MX records.
    NoData,
    NxDomain,
    ServFail,
    /// Never answer (to exercise timeouts).
    Silent,
    /// One A record (a host a Tor exit resolves); other types get no data.
    A(Ipv4Addr),
}

pub struct DnsServer {
    pub addr: SocketAddr,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
    table: Arc<HashMap<String, Zone>>,
}

impl DnsServer {
    pub async fn start(zones: &[(&str, Zone)]) -> DnsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_tcp(listener, zones)
    }

    /// Like [`DnsServer::start`], and also on UDP at the same address.
    pub async fn start_with_udp(zones: &[(&str, Zone)]) -> DnsServer {
        for _ in 0..100 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            // The kernel chose a free TCP port; the same UDP port is
            // almost always free too, else try another pair.
            let Ok(udp) = UdpSocket::bind(addr).await else {
                continue;
            };
            let server = Self::serve_tcp(listener, zones);
            let (table, log) = (server.table.clone(), server.queries.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                    if let Some(bytes) = answer(&buf[..n], &table, &log) {
                        let _ = udp.send_to(&bytes, from).await;
                    }
                }
            });
            return server;
        }
        panic!("no port free for DNS on both TCP and UDP");
    }

    fn serve_tcp(listener: TcpListener, zones: &[(&str, Zone)]) -> DnsServer {
        let table: HashMap<String, Zone> = zones
            .iter()
            .map(|(n, z)| (n.to_lowercase(), z.clone()))
            .collect();
        let table = Arc::new(table);
        let addr = listener.local_addr().unwrap();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (shared, log) = (table.clone(), queries.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (table, log) = (shared.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, table, log).await;
                });
            }
        });
        DnsServer {
            addr,
            queries,
            table,
        }
    }

    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.queries.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    table: Arc<HashMap<String, Zone>>,
    log: Arc<Mutex<Vec<(String, RecordType)>>>,
) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return Ok(());
        }
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut buf).await?;
        let Ok(query) = Message::from_vec(&buf) else {
            return Ok(());
        };
        if query.queries.is_empty() {
            return Ok(());
        }
        let Some(bytes) = answer(&buf, &table, &log) else {
            continue;
        };
        stream
            .write_all(&(bytes.len() as u16).to_be_bytes())
            .await?;
        stream.write_all(&bytes).await?;
    }
}

/// The reply to one query message, or `None` to stay silent.
fn answer(
    buf: &[u8],
    table: &HashMap<String, Zone>,
    log: &Mutex<Vec<(String, RecordType)>>,
) -> Option<Vec<u8>> {
    let query = Message::from_vec(buf).ok()?;
    let q = query.queries.first().cloned()?;
    let name = q.name().to_ascii().trim_end_matches('.').to_lowercase();
    log.lock().unwrap().push((name.clone(), q.query_type()));
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    let soa = || {
        let zone = Name::from_ascii("example.").unwrap();
        Record::from_rdata(
            zone.clone(),
            60,
            RData::SOA(SOA::new(zone.clone(), zone, 1, 60, 60, 60, 60)),
        )
    };
    match table.get(&name) {
        Some(Zone::Silent) => return None,
        Some(Zone::ServFail) => reply.metadata.response_code = ResponseCode::ServFail,
        Some(Zone::NxDomain) | None => {
            reply.metadata.response_code = ResponseCode::NXDomain;
            reply.add_authority(soa());
        }
        Some(Zone::NoData) => {
            reply.add_authority(soa());
        }
        Some(Zone::Mx(records)) if q.query_type() == RecordType::MX => {
            for (pref, host) in records {
                let exchange = Name::from_ascii(host).unwrap();
                reply.add_answer(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::MX(MX::new(*pref, exchange)),
                ));
            }
        }
        Some(Zone::A(ip)) if q.query_type() == RecordType::A => {
            reply.add_answer(Record::from_rdata(q.name().clone(), 300, RData::A(A(*ip))));
        }
        Some(Zone::Mx(_) | Zone::A(_)) => {
            reply.add_authority(soa());
        }
    }
    Some(reply.to_vec().unwrap())
}
