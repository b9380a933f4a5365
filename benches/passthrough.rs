//! Passthrough forwarders compared: `tokio::io::copy_bidirectional`, our user-space copy
//! (`forward_with_prefix`, 32 KiB per direction while it is busy) and `splice(2)` (`forward_spliced`: default
//! 64 KiB pipes grown to 1 MiB once a direction fills one; and fixed 256 KiB and 1 MiB pipes).
//!
//! Three threads: the proxy (a current-thread tokio runtime running only the forwarder under
//! test), and the load (a client that connects through the proxy and a sink that the proxy
//! connects to, both on a second current-thread runtime). The client writes in 64 KiB writes,
//! half-closes, and waits for the sink's close to come back through the proxy; the sink checks
//! the byte count. Reported: payload MB/s over wall time, and the *proxy thread's* CPU time
//! (user + system, `getrusage(RUSAGE_THREAD)`) per GiB moved (or per connection for the
//! short-connection scenario) — the kernel work splice saves or costs is system time in that
//! thread, so it is counted.
//!
//! Each cell runs `EGRET_BENCH_ROUNDS` times (default 3), forwarders interleaved per round so
//! a noisy neighbour hits all of them alike; the table shows the median.
//! `EGRET_BENCH_QUICK=1` moves a few MB only (a smoke test).
//!
//! Run: `cargo bench -p egret-benches --bench passthrough`

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("passthrough benchmark: splice(2) is Linux-only; nothing to compare here");
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use nix::sys::resource::{getrusage, UsageWho};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// The gateway's default TCP idle timeout (Istio: 1 h), so the timer path is included.
    const IDLE: Duration = Duration::from_secs(3600);
    const WRITE_CHUNK: usize = 64 * 1024;
    const MIB: u64 = 1024 * 1024;

    #[derive(Clone, Copy, Debug)]
    enum Forwarder {
        CopyBidirectional,
        Userspace,
        Splice,
        Splice1MiB,
        Splice256KiB,
    }

    impl Forwarder {
        const ALL: [Forwarder; 5] = [
            Forwarder::CopyBidirectional,
            Forwarder::Userspace,
            Forwarder::Splice,
            Forwarder::Splice1MiB,
            Forwarder::Splice256KiB,
        ];

        fn label(self) -> &'static str {
            match self {
                Forwarder::CopyBidirectional => "tokio::io::copy_bidirectional (8 KiB)",
                Forwarder::Userspace => "forward_with_prefix (user space, 32 KiB while busy)",
                Forwarder::Splice => "forward_spliced (splice, 64 KiB pipes, 1 MiB once full)",
                Forwarder::Splice1MiB => "forward_spliced_with_pipe_size (splice, 1 MiB pipes)",
                Forwarder::Splice256KiB => "forward_spliced_with_pipe_size (splice, 256 KiB pipes)",
            }
        }

        async fn forward(self, mut down: TcpStream, up: TcpStream) {
            match self {
                Forwarder::CopyBidirectional => {
                    let mut up = up;
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
                Forwarder::Userspace => {
                    egret_sni::forward_with_prefix(&mut down, up, Vec::new(), IDLE).await;
                }
                Forwarder::Splice => {
                    egret_sni::forward_spliced(&mut down, up, &[], IDLE).await;
                }
                Forwarder::Splice1MiB | Forwarder::Splice256KiB => {
                    let size = match self {
                        Forwarder::Splice1MiB => MIB as usize,
                        _ => 256 * 1024,
                    };
                    egret_sni::forward_spliced_with_pipe_size(&mut down, up, &[], IDLE, Some(size))
                        .await;
                }
            }
        }
    }

    #[derive(Clone, Copy)]
    struct Scenario {
        conns: usize,
        bytes_per_conn: u64,
        /// Client connections in flight at once.
        concurrency: usize,
    }

    struct Measured {
        wall: Duration,
        proxy_cpu: Duration,
    }

    impl Scenario {
        fn total_bytes(&self) -> u64 {
            self.bytes_per_conn * self.conns as u64
        }
        fn mb_per_s(&self, m: &Measured) -> f64 {
            self.total_bytes() as f64 / 1e6 / m.wall.as_secs_f64()
        }
        fn cpu_ms_per_gib(&self, m: &Measured) -> f64 {
            m.proxy_cpu.as_secs_f64() * 1e3 / (self.total_bytes() as f64 / (1024.0 * MIB as f64))
        }
        fn conns_per_s(&self, m: &Measured) -> f64 {
            self.conns as f64 / m.wall.as_secs_f64()
        }
        fn cpu_us_per_conn(&self, m: &Measured) -> f64 {
            m.proxy_cpu.as_secs_f64() * 1e6 / self.conns as f64
        }
    }

    fn thread_cpu() -> Duration {
        let u = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage(RUSAGE_THREAD)");
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
        };
        tv(u.user_time()) + tv(u.system_time())
    }

    fn current_thread_rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    }

    /// The proxy thread: accept `conns` connections, forward each to `sink`, return the CPU
    /// time this thread spent once all of them are done.
    fn proxy(
        listener: std::net::TcpListener,
        sink: SocketAddr,
        fwd: Forwarder,
        conns: usize,
    ) -> Duration {
        let rt = current_thread_rt();
        let start = thread_cpu();
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("proxy listener");
            let mut tasks = Vec::with_capacity(conns);
            for _ in 0..conns {
                let (down, _) = listener.accept().await.expect("proxy accept");
                tasks.push(tokio::spawn(async move {
                    let _ = down.set_nodelay(true);
                    let up = TcpStream::connect(sink).await.expect("connect sink");
                    let _ = up.set_nodelay(true);
                    fwd.forward(down, up).await;
                }));
            }
            for t in tasks {
                t.await.expect("proxy task");
            }
        });
        thread_cpu().saturating_sub(start)
    }

    /// The load: `sc.conns` client connections through the proxy (at most `sc.concurrency`
    /// at once) into a sink that counts what arrives. Returns the wall time.
    async fn load(sc: Scenario, proxy_addr: SocketAddr, sink: TcpListener) -> Duration {
        let sink_task = tokio::spawn(async move {
            let mut readers = Vec::with_capacity(sc.conns);
            for _ in 0..sc.conns {
                let (mut s, _) = sink.accept().await.expect("sink accept");
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; WRITE_CHUNK];
                    let mut got = 0u64;
                    loop {
                        let n = s.read(&mut buf).await.expect("sink read");
                        if n == 0 {
                            break;
                        }
                        got += n as u64;
                    }
                    assert_eq!(got, sc.bytes_per_conn, "sink got a short stream");
                    // Dropping `s` closes: the FIN travels back to the client.
                }));
            }
            for r in readers {
                r.await.expect("sink reader");
            }
        });

        let chunk: &'static [u8] = vec![0x5a; WRITE_CHUNK].leak();
        let start = Instant::now();
        let per_client = sc.conns / sc.concurrency;
        let clients: Vec<_> = (0..sc.concurrency)
            .map(|_| {
                tokio::spawn(async move {
                    for _ in 0..per_client {
                        let mut c = TcpStream::connect(proxy_addr).await.expect("connect");
                        let _ = c.set_nodelay(true);
                        let mut left = sc.bytes_per_conn;
                        while left > 0 {
                            let n = left.min(WRITE_CHUNK as u64) as usize;
                            c.write_all(&chunk[..n]).await.expect("client write");
                            left -= n as u64;
                        }
                        c.shutdown().await.expect("client shutdown");
                        let mut rest = Vec::new();
                        c.read_to_end(&mut rest).await.expect("client read");
                        assert!(rest.is_empty());
                    }
                })
            })
            .collect();
        for c in clients {
            c.await.expect("client");
        }
        let wall = start.elapsed();
        sink_task.await.expect("sink");
        wall
    }

    fn run(sc: Scenario, fwd: Forwarder) -> Measured {
        assert_eq!(sc.conns % sc.concurrency, 0);
        let front = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        front.set_nonblocking(true).expect("nonblocking");
        let proxy_addr = front.local_addr().expect("addr");
        let rt = current_thread_rt();
        let sink = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind sink");
        let sink_addr = sink.local_addr().expect("addr");
        let proxy = std::thread::spawn(move || proxy(front, sink_addr, fwd, sc.conns));
        let wall = rt.block_on(load(sc, proxy_addr, sink));
        let proxy_cpu = proxy.join().expect("proxy thread");
        Measured { wall, proxy_cpu }
    }

    fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
        v.sort_by(f64::total_cmp);
        let mid = v[v.len() / 2];
        (mid, v[0], v[v.len() - 1])
    }

    fn cell((mid, lo, hi): (f64, f64, f64), rounds: usize) -> String {
        if rounds < 3 {
            format!("{mid:.0}")
        } else {
            format!("{mid:.0} ({lo:.0}–{hi:.0})")
        }
    }

    pub fn main() {
        // Full size only under `cargo bench` (which passes `--bench`); `cargo test
        // --all-targets` runs this once as a smoke test.
        let quick = std::env::var("EGRET_BENCH_QUICK").is_ok_and(|v| v == "1")
            || !std::env::args().any(|a| a == "--bench");
        let rounds: usize = std::env::var("EGRET_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 1 } else { 3 })
            .max(1);
        let (bulk, medium, short) = if quick {
            (
                Scenario {
                    conns: 1,
                    bytes_per_conn: 8 * MIB,
                    concurrency: 1,
                },
                Scenario {
                    conns: 8,
                    bytes_per_conn: MIB,
                    concurrency: 4,
                },
                Scenario {
                    conns: 32,
                    bytes_per_conn: 16 * 1024,
                    concurrency: 4,
                },
            )
        } else {
            (
                Scenario {
                    conns: 1,
                    bytes_per_conn: 1024 * MIB,
                    concurrency: 1,
                },
                Scenario {
                    conns: 512,
                    bytes_per_conn: MIB,
                    concurrency: 8,
                },
                Scenario {
                    conns: 1000,
                    bytes_per_conn: 16 * 1024,
                    concurrency: 8,
                },
            )
        };

        let started = Instant::now();
        // [forwarder][scenario] -> measurements over rounds
        let mut results: Vec<[Vec<Measured>; 3]> =
            Forwarder::ALL.iter().map(|_| Default::default()).collect();
        for _ in 0..rounds {
            for (i, fwd) in Forwarder::ALL.into_iter().enumerate() {
                for (j, sc) in [bulk, medium, short].into_iter().enumerate() {
                    results[i][j].push(run(sc, fwd));
                }
            }
        }

        println!();
        println!(
            "passthrough forwarders, loopback, {} round(s), median (min–max); proxy CPU = \
             user+sys of the proxy thread",
            rounds
        );
        println!();
        println!(
            "| forwarder | {b} MiB ×1: MB/s | CPU ms/GiB | {mc} × {mb} MiB: MB/s | CPU ms/GiB | \
             {sc} × {sk} KiB: conn/s | CPU µs/conn |",
            b = bulk.bytes_per_conn / MIB,
            mc = medium.conns,
            mb = medium.bytes_per_conn / MIB,
            sc = short.conns,
            sk = short.bytes_per_conn / 1024,
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (fwd, r) in Forwarder::ALL.iter().zip(&results) {
            let stat = |j: usize, f: &dyn Fn(&Scenario, &Measured) -> f64, sc: &Scenario| {
                cell(median(r[j].iter().map(|m| f(sc, m)).collect()), rounds)
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                fwd.label(),
                stat(0, &Scenario::mb_per_s, &bulk),
                stat(0, &Scenario::cpu_ms_per_gib, &bulk),
                stat(1, &Scenario::mb_per_s, &medium),
                stat(1, &Scenario::cpu_ms_per_gib, &medium),
                stat(2, &Scenario::conns_per_s, &short),
                stat(2, &Scenario::cpu_us_per_conn, &short),
            );
        }
        println!();
        println!("total {:.1} s", started.elapsed().as_secs_f64());
    }
}
