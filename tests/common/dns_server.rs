//! A DNS server over TCP (RFC 1035 §4.2.2 framing) for tests, answering MX
//! queries from a table and recording every query it gets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
}

pub struct DnsServer {
    pub addr: SocketAddr,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
}

impl DnsServer {
    pub async fn start(zones: &[(&str, Zone)]) -> DnsServer {
        let table: HashMap<String, Zone> = zones
            .iter()
            .map(|(n, z)| (n.to_lowercase(), z.clone()))
            .collect();
        let table = Arc::new(table);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let log = queries.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (table, log) = (table.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, table, log).await;
                });
            }
        });
        DnsServer { addr, queries }
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
        let Some(q) = query.queries.first().cloned() else {
            return Ok(());
        };
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
            Some(Zone::Silent) => continue,
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
            Some(Zone::Mx(_)) => {
                reply.add_authority(soa());
            }
        }
        let bytes = reply.to_vec().unwrap();
        stream
            .write_all(&(bytes.len() as u16).to_be_bytes())
            .await?;
        stream.write_all(&bytes).await?;
    }
}
