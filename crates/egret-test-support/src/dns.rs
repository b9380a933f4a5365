//! A minimal authoritative DNS server for tests, over UDP and TCP on one 127.0.0.1 port.
//!
//! It answers A and AAAA queries for configured names (TTL per name), NXDOMAIN for unknown
//! names, and can be told to SERVFAIL or stay silent per name. Records can be replaced while
//! it runs and queries are counted per name, for TTL and re-resolution tests. The wire format
//! (RFC 1035 header, one question, answers pointing back to the question's name) is written
//! by hand.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use crate::lock;
use crate::sockets::{Sockets, Tracked, ACCEPT_ERROR_PAUSE};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

const RCODE_NOERROR: u8 = 0;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;

/// How the server answers for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsAnswer {
    /// These addresses (A for IPv4, AAAA for IPv6), with this TTL in seconds. An empty list
    /// gives NOERROR with no answers (NODATA).
    Ips {
        /// Addresses, in answer order.
        ips: Vec<IpAddr>,
        /// TTL in seconds.
        ttl: u32,
    },
    /// SERVFAIL.
    ServFail,
    /// NXDOMAIN (same as an unknown name, but counted under this name).
    NxDomain,
    /// No reply at all (the client times out).
    Silent,
}

#[derive(Default)]
struct DnsState {
    names: Mutex<HashMap<String, DnsAnswer>>,
    /// (name, qtype) -> number of queries.
    queries: Mutex<HashMap<(String, u16), usize>>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The server. Stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<DnsState>,
    sockets: Arc<Sockets>,
    _listener: Option<Tracked>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.sockets.shutdown_all();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DnsServer {
    /// Starts with these (name, addresses, ttl) records.
    pub async fn start<N: AsRef<str>>(
        records: impl IntoIterator<Item = (N, Vec<IpAddr>, u32)>,
    ) -> io::Result<DnsServer> {
        let state = Arc::new(DnsState::default());
        for (name, ips, ttl) in records {
            lock(&state.names).insert(normalize(name.as_ref()), DnsAnswer::Ips { ips, ttl });
        }
        // UDP and TCP on the same port number: take a UDP port, try the same TCP port, retry
        // with a new one if that is taken.
        let mut last_err = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind(("127.0.0.1", 0)).await?;
            let addr = udp.local_addr()?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    let sockets = Arc::new(Sockets::default());
                    let listener = sockets.track(&tcp);
                    let tasks = vec![
                        tokio::spawn(udp_loop(udp, state.clone())),
                        tokio::spawn(tcp_loop(tcp, state.clone(), sockets.clone())),
                    ];
                    return Ok(DnsServer {
                        addr,
                        state,
                        sockets,
                        _listener: listener,
                        tasks,
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no UDP+TCP port pair")))
    }

    /// The address (UDP and TCP) it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets (or replaces) the addresses of `name`.
    pub fn set(&self, name: &str, ips: Vec<IpAddr>, ttl: u32) {
        self.set_answer(name, DnsAnswer::Ips { ips, ttl });
    }

    /// Sets how `name` is answered.
    pub fn set_answer(&self, name: &str, answer: DnsAnswer) {
        lock(&self.state.names).insert(normalize(name), answer);
    }

    /// Makes `name` unknown again (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        lock(&self.state.names).remove(&normalize(name));
    }

    /// Queries received for `name`, all types together.
    pub fn queries(&self, name: &str) -> usize {
        let name = normalize(name);
        lock(&self.state.queries)
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, c)| *c)
            .sum()
    }

    /// A queries received for `name`.
    pub fn queries_a(&self, name: &str) -> usize {
        self.queries_of(name, TYPE_A)
    }

    /// AAAA queries received for `name`.
    pub fn queries_aaaa(&self, name: &str) -> usize {
        self.queries_of(name, TYPE_AAAA)
    }

    fn queries_of(&self, name: &str, qtype: u16) -> usize {
        lock(&self.state.queries)
            .get(&(normalize(name), qtype))
            .copied()
            .unwrap_or(0)
    }

    /// Queries received for all names.
    pub fn total_queries(&self) -> usize {
        lock(&self.state.queries).values().sum()
    }
}

async fn udp_loop(socket: UdpSocket, state: Arc<DnsState>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            // e.g. the socket was shut down by Drop: yield so the abort lands.
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            continue;
        };
        if let Some(reply) = answer(&buf[..n], &state, true) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn tcp_loop(listener: TcpListener, state: Arc<DnsState>, sockets: Arc<Sockets>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            // e.g. the socket was shut down by Drop: yield so the abort lands.
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            continue;
        };
        let tracked = sockets.track(&stream);
        let state = state.clone();
        conns.spawn(async move {
            let _tracked = tracked;
            tcp_conn(stream, state).await;
        });
    }
}

async fn tcp_conn(mut stream: TcpStream, state: Arc<DnsState>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut msg = vec![0u8; len as usize];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        if let Some(reply) = answer(&msg, &state, false) {
            let Ok(len) = u16::try_from(reply.len()) else {
                return;
            };
            let mut out = Vec::with_capacity(reply.len() + 2);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&reply);
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

/// A parsed query: id, flags, question bytes (name + type + class, as sent), the name, the
/// type, and the EDNS payload size if an OPT record came along.
struct Query<'a> {
    id: u16,
    flags: u16,
    question: &'a [u8],
    name: String,
    qtype: u16,
    qclass: u16,
    edns_size: Option<u16>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads an uncompressed name at `at`; returns (dotted name, offset after it).
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            return Some((labels.join("."), at));
        }
        if len & 0xc0 != 0 {
            return None; // compression in a query's question: not supported
        }
        let label = msg.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += len;
    }
}

fn parse(msg: &[u8]) -> Option<Query<'_>> {
    let id = be16(msg, 0)?;
    let flags = be16(msg, 2)?;
    let qdcount = be16(msg, 4)?;
    let ancount = be16(msg, 6)?;
    let nscount = be16(msg, 8)?;
    let arcount = be16(msg, 10)?;
    if qdcount != 1 {
        return Some(Query {
            id,
            flags,
            question: &[],
            name: String::new(),
            qtype: 0,
            qclass: 0,
            edns_size: None,
        });
    }
    let (name, after_name) = read_name(msg, 12)?;
    let qtype = be16(msg, after_name)?;
    let qclass = be16(msg, after_name + 2)?;
    let question_end = after_name + 4;
    let question = msg.get(12..question_end)?;
    // Skip answer/authority records (none expected), then look for OPT among additionals.
    let mut at = question_end;
    let mut edns_size = None;
    for i in 0..(ancount as usize + nscount as usize + arcount as usize) {
        let (_, after) = read_name(msg, at)?;
        let rtype = be16(msg, after)?;
        let rclass = be16(msg, after + 2)?;
        let rdlen = be16(msg, after + 8)? as usize;
        if rtype == TYPE_OPT && i >= ancount as usize + nscount as usize {
            edns_size = Some(rclass);
        }
        at = after + 10 + rdlen;
    }
    Some(Query {
        id,
        flags,
        question,
        name,
        qtype,
        qclass,
        edns_size,
    })
}

/// Builds the reply to `msg`, or None to stay silent.
fn answer(msg: &[u8], state: &DnsState, udp: bool) -> Option<Vec<u8>> {
    let Some(q) = parse(msg) else {
        // Unparseable: FORMERR if we at least have an id and it is a query.
        let id = be16(msg, 0)?;
        let flags = be16(msg, 2)?;
        if flags & 0x8000 != 0 {
            return None;
        }
        return Some(header(id, flags, RCODE_FORMERR, 0, 0, 0));
    };
    if q.flags & 0x8000 != 0 {
        return None; // a response, not a query
    }
    let opcode = (q.flags >> 11) & 0xf;
    if opcode != 0 {
        return Some(header(q.id, q.flags, RCODE_NOTIMP, 0, 0, 0));
    }
    if q.question.is_empty() {
        return Some(header(q.id, q.flags, RCODE_FORMERR, 0, 0, 0));
    }
    let name = normalize(&q.name);
    *lock(&state.queries)
        .entry((name.clone(), q.qtype))
        .or_insert(0) += 1;
    let entry = lock(&state.names).get(&name).cloned();

    let (rcode, ips, ttl) = match entry {
        None | Some(DnsAnswer::NxDomain) => (RCODE_NXDOMAIN, Vec::new(), 0),
        Some(DnsAnswer::ServFail) => (RCODE_SERVFAIL, Vec::new(), 0),
        Some(DnsAnswer::Silent) => return None,
        Some(DnsAnswer::Ips { ips, ttl }) => (RCODE_NOERROR, ips, ttl),
    };
    let mut rdatas: Vec<(u16, Vec<u8>)> = Vec::new();
    if q.qclass == CLASS_IN {
        for ip in &ips {
            match (ip, q.qtype) {
                (IpAddr::V4(v4), TYPE_A) => rdatas.push((TYPE_A, v4.octets().to_vec())),
                (IpAddr::V6(v6), TYPE_AAAA) => rdatas.push((TYPE_AAAA, v6.octets().to_vec())),
                _ => {}
            }
        }
    }
    let opt = q.edns_size.is_some();
    let limit = if udp {
        q.edns_size.map_or(512, |s| s.max(512)) as usize
    } else {
        u16::MAX as usize
    };
    let mut count = rdatas.len();
    loop {
        let reply = build(&q, rcode, &rdatas[..count], ttl, opt, count < rdatas.len());
        if reply.len() <= limit || count == 0 {
            return Some(reply);
        }
        count -= 1;
    }
}

fn header(id: u16, query_flags: u16, rcode: u8, an: u16, qd: u16, ar: u16) -> Vec<u8> {
    // QR=1, opcode copied, AA=1, RD copied, RA=1.
    let flags = 0x8000 | (query_flags & 0x7800) | 0x0400 | (query_flags & 0x0100) | 0x0080;
    let flags = flags | u16::from(rcode & 0xf);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&qd.to_be_bytes());
    out.extend_from_slice(&an.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&ar.to_be_bytes());
    out
}

fn build(
    q: &Query<'_>,
    rcode: u8,
    rdatas: &[(u16, Vec<u8>)],
    ttl: u32,
    opt: bool,
    truncated: bool,
) -> Vec<u8> {
    let an = u16::try_from(rdatas.len()).unwrap_or(u16::MAX);
    let mut out = header(q.id, q.flags, rcode, an, 1, u16::from(opt));
    if truncated {
        out[2] |= 0x02; // TC
    }
    out.extend_from_slice(q.question);
    for (rtype, rdata) in rdatas {
        out.extend_from_slice(&[0xc0, 0x0c]); // pointer to the question's name
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(rdata);
    }
    if opt {
        out.push(0); // root name
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&1232u16.to_be_bytes()); // our UDP payload size
        out.extend_from_slice(&0u32.to_be_bytes()); // ext rcode, version, flags
        out.extend_from_slice(&0u16.to_be_bytes()); // no options
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m
    }

    #[test]
    fn a_answer_points_back_to_question() {
        let state = DnsState::default();
        lock(&state.names).insert(
            "x.test".into(),
            DnsAnswer::Ips {
                ips: vec!["10.0.0.1".parse().unwrap()],
                ttl: 7,
            },
        );
        let q = query("X.test", TYPE_A);
        let r = answer(&q, &state, true).unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0xf, RCODE_NOERROR);
        assert_eq!(be16(&r, 6), Some(1));
        let ans = &r[q.len()..];
        assert_eq!(&ans[0..2], &[0xc0, 0x0c]);
        assert_eq!(be16(ans, 2), Some(TYPE_A));
        assert_eq!(&ans[6..10], &7u32.to_be_bytes());
        assert_eq!(&ans[12..16], &[10, 0, 0, 1]);
    }

    #[test]
    fn unknown_is_nxdomain_and_counted() {
        let state = DnsState::default();
        let r = answer(&query("nope.test", TYPE_AAAA), &state, true).unwrap();
        assert_eq!(r[3] & 0xf, RCODE_NXDOMAIN);
        assert_eq!(
            lock(&state.queries).get(&("nope.test".into(), TYPE_AAAA)),
            Some(&1)
        );
    }

    #[test]
    fn large_answer_is_truncated_over_udp_only() {
        let state = DnsState::default();
        let ips = (0..100)
            .map(|i| IpAddr::from([10, 0, 0, i as u8]))
            .collect();
        lock(&state.names).insert("big.test".into(), DnsAnswer::Ips { ips, ttl: 1 });
        let udp = answer(&query("big.test", TYPE_A), &state, true).unwrap();
        assert!(udp.len() <= 512);
        assert_eq!(udp[2] & 0x02, 0x02);
        let tcp = answer(&query("big.test", TYPE_A), &state, false).unwrap();
        assert_eq!(be16(&tcp, 6), Some(100));
        assert_eq!(tcp[2] & 0x02, 0);
    }

    #[test]
    fn garbage_does_not_panic() {
        let state = DnsState::default();
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = answer(&junk, &state, true);
        }
    }
}
