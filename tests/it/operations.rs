//! Operations: configuration reload under load, a broken configuration keeps serving,
//! SIGTERM lets in-flight requests finish.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use egret_test_support::{http1_get, Behavior, H2Conn, Http1Conn, HttpUpstream};

use crate::common::{config_dir, scenario, Gateway};

const NEW_HOST: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: new }
spec:
  hosts: [new.example.com]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: new-gw }
spec:
  selector: { istio: egressgateway }
  servers:
  - port: { number: 80, name: http, protocol: HTTP }
    hosts: [new.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: new }
spec:
  hosts: [new.example.com]
  gateways: [new-gw]
  http:
  - route:
    - destination: { host: new.example.com, port: { number: 80 } }
"#;

fn copy_s1(dir: &egret_test_support::TestDir) {
    for e in std::fs::read_dir(scenario("s1-http")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
}

/// Whether a new request for `host` gets `status` within 10 s (a reload being applied); a
/// hang guard, not a timing assertion.
async fn answers_with(gw: &Gateway, host: &str, status: u16) -> bool {
    for _ in 0..400 {
        if http1_get(gw.http, host, "/", &[]).await.unwrap().status == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_change_under_load_loses_no_request_and_logs_each_once() {
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let dir = config_dir("reload", &[]);
    copy_s1(&dir);
    let extra = vec![
        "--connect-to".to_string(),
        format!("edition.cnn.com:80:{}", up.addr()),
        "--connect-to".to_string(),
        format!("new.example.com:80:{}", up.addr()),
        "--watch-interval".to_string(),
        "100ms".to_string(),
    ];
    let mut gw = Gateway::start(&[dir.path()], &extra).await;
    assert_eq!(
        http1_get(gw.http, "new.example.com", "/", &[])
            .await
            .unwrap()
            .status,
        404
    );

    // Continuous load on keep-alive and on fresh connections while the configuration changes.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for keepalive in [true, false] {
        let (stop, sent, failed, addr) = (stop.clone(), sent.clone(), failed.clone(), gw.http);
        load.push(tokio::spawn(async move {
            let mut conn = Http1Conn::connect(addr).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let r = if keepalive {
                    conn.get("edition.cnn.com", "/load", &[]).await
                } else {
                    http1_get(addr, "edition.cnn.com", "/load", &[]).await
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if !matches!(r, Ok(ref r) if r.status == 200) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    dir.write("04-new-host.yaml", NEW_HOST.as_bytes()).unwrap();
    let mut picked_up = false;
    for _ in 0..400 {
        if http1_get(gw.http, "new.example.com", "/", &[])
            .await
            .unwrap()
            .status
            == 200
        {
            picked_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        picked_up,
        "reload not picked up; stderr:\n{}",
        gw.process.stderr()
    );
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the reload"
    );
    assert!(gw.process.stderr().contains("configuration reloaded"));

    // Exactly one line per request: the load's, plus the probes (404s then one 200).
    let lines = {
        let mut v = Vec::new();
        while let Some(l) = gw.process.next_log_line(Duration::from_millis(500)).await {
            v.push(crate::common::LogLine::parse(&l));
        }
        v
    };
    let load_lines = lines.iter().filter(|l| l.path == "/load").count();
    assert_eq!(load_lines, sent.load(Ordering::Relaxed));
    // Lines after the reload carry the new configuration's requests.
    assert!(lines
        .iter()
        .any(|l| l.authority == "new.example.com" && l.code == "200"));
}

/// A reload reaches the next request of a connection opened before it, HTTP/1.1 and HTTP/2,
/// as Envoy 1.40 applies a route update — without the connection being cut: revoking a
/// host takes effect for the sidecars' pooled connections too.
#[tokio::test]
async fn a_reload_reaches_the_next_request_of_an_open_connection() {
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let dir = config_dir("reload-open", &[]);
    copy_s1(&dir);
    let extra = vec![
        "--connect-to".to_string(),
        format!("edition.cnn.com:80:{}", up.addr()),
        "--watch-interval".to_string(),
        "0s".to_string(),
    ];
    let gw = Gateway::start(&[dir.path()], &extra).await;
    let mut h1 = Http1Conn::connect(gw.http).await.unwrap();
    let mut h2 = H2Conn::connect(gw.http).await.unwrap();
    assert_eq!(
        h1.get("edition.cnn.com", "/", &[]).await.unwrap().status,
        200
    );
    assert_eq!(
        h2.get("edition.cnn.com", "/", &[]).await.unwrap().status,
        200
    );

    // The host's VirtualService goes: nothing routes edition.cnn.com at the gateway now.
    std::fs::remove_file(dir.join("03-virtualservice.yaml")).unwrap();
    gw.process.signal("HUP").await.unwrap();
    let applied = answers_with(&gw, "edition.cnn.com", 404).await;
    assert!(applied, "stderr:\n{}", gw.process.stderr());

    // The connections opened before the reload: refused now, and still open.
    let r = h1.get("edition.cnn.com", "/", &[]).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection"), None);
    assert_eq!(
        h2.get("edition.cnn.com", "/", &[]).await.unwrap().status,
        404
    );
    assert!(!h1.is_closed() && !h2.is_closed());
}

#[tokio::test]
async fn broken_config_keeps_the_old_one_serving_and_sighup_reloads() {
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let dir = config_dir("broken", &[]);
    copy_s1(&dir);
    let extra = vec![
        "--connect-to".to_string(),
        format!("edition.cnn.com:80:{}", up.addr()),
        "--connect-to".to_string(),
        format!("new.example.com:80:{}", up.addr()),
        "--watch-interval".to_string(),
        "0s".to_string(),
    ];
    let gw = Gateway::start(&[dir.path()], &extra).await;
    dir.write("05-broken.yaml", b"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: b }\nspec:\n  hosts: [\n").unwrap();
    gw.process.signal("HUP").await.unwrap();
    let mut reported = false;
    for _ in 0..400 {
        if gw.process.stderr().contains("reload failed") {
            reported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reported, "stderr:\n{}", gw.process.stderr());
    assert!(
        gw.process.stderr().contains("05-broken.yaml:"),
        "the error names file and line"
    );
    assert_eq!(
        http1_get(gw.http, "edition.cnn.com", "/", &[])
            .await
            .unwrap()
            .status,
        200
    );

    // Fix it (a valid new host instead) and reload with SIGHUP.
    std::fs::remove_file(dir.join("05-broken.yaml")).unwrap();
    dir.write("04-new-host.yaml", NEW_HOST.as_bytes()).unwrap();
    gw.process.signal("HUP").await.unwrap();
    let ok = answers_with(&gw, "new.example.com", 200).await;
    assert!(ok, "stderr:\n{}", gw.process.stderr());
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let up = HttpUpstream::start(Behavior::delay(
        Duration::from_millis(1500),
        Behavior::fixed(200, "slow"),
    ))
    .await
    .unwrap();
    let mut gw = Gateway::start(
        &[&scenario("s1-http")],
        &[
            "--connect-to".into(),
            format!("edition.cnn.com:80:{}", up.addr()),
            "--drain-timeout".into(),
            "20s".into(),
        ],
    )
    .await;
    let addr = gw.http;
    let req = tokio::spawn(async move { http1_get(addr, "edition.cnn.com", "/slow", &[]).await });
    for _ in 0..400 {
        if up.connections() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.process.signal("TERM").await.unwrap();
    let r = req.await.unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow");
    // HTTP/1.1 responses during the drain ask the client to close.
    assert_eq!(r.header("connection"), Some("close"));
    let status = gw
        .process
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("egret exits after the drain");
    assert!(status.success(), "{status:?}");
    let l = gw.next_line().await;
    assert_eq!(
        (l.path.as_str(), l.code.as_str(), l.flags.as_str()),
        ("/slow", "200", "-")
    );
    // New connections are refused once draining.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn probes_metrics_and_admin_endpoints() {
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let gw = Gateway::start(
        &[&scenario("s1-http")],
        &[
            "--connect-to".into(),
            format!("edition.cnn.com:80:{}", up.addr()),
        ],
    )
    .await;
    let health = http1_get(gw.health, "localhost", "/healthz/ready", &[])
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    let ready = http1_get(gw.admin, "localhost", "/ready", &[])
        .await
        .unwrap();
    assert_eq!((ready.status.as_u16(), ready.text().trim()), (200, "LIVE"));

    for _ in 0..3 {
        assert_eq!(
            http1_get(gw.http, "edition.cnn.com", "/", &[])
                .await
                .unwrap()
                .status,
            200
        );
    }
    assert_eq!(
        http1_get(gw.http, "other.example", "/", &[])
            .await
            .unwrap()
            .status,
        404
    );
    // Metrics are counted from the log records, which the writer thread has by now.
    let mut text = String::new();
    for _ in 0..200 {
        text = http1_get(gw.prometheus, "localhost", "/stats/prometheus", &[])
            .await
            .unwrap()
            .text();
        if text.contains("response_code=\"404\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
        .unwrap_or_else(|| panic!("no istio_requests_total for 200:\n{text}"));
    assert!(
        line.contains("destination_service=\"edition.cnn.com\""),
        "{line}"
    );
    assert!(line.contains("reporter=\"source\""), "{line}");
    assert!(line.ends_with(" 3"), "{line}");
    let nr = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_flags=\"NR\""))
        .unwrap();
    assert!(nr.ends_with(" 1"), "{nr}");
    assert!(
        text.contains(
            "envoy_cluster_upstream_rq_total{cluster_name=\"outbound|80||edition.cnn.com\"} 3"
        ),
        "{text}"
    );

    let dump = http1_get(gw.admin, "localhost", "/config_dump", &[])
        .await
        .unwrap()
        .json();
    assert_eq!(dump["clusters"][0]["name"], "outbound|80||edition.cnn.com");
    assert_eq!(dump["version"].as_str().map(str::len), Some(12));

    let clusters = http1_get(gw.admin, "localhost", "/clusters", &[])
        .await
        .unwrap()
        .text();
    let ep = format!(
        "outbound|80||edition.cnn.com::{}::health_flags::healthy",
        up.addr()
    );
    assert!(clusters.contains(&ep), "{clusters}");
    assert!(
        clusters.contains("outbound|80||edition.cnn.com::rq_active::0"),
        "{clusters}"
    );

    // State-changing endpoints want POST, as Envoy's do.
    assert_eq!(
        http1_get(gw.admin, "localhost", "/quitquitquit", &[])
            .await
            .unwrap()
            .status,
        405
    );
}

#[tokio::test]
async fn readiness_turns_false_while_draining() {
    let up = HttpUpstream::start(Behavior::delay(
        Duration::from_millis(1500),
        Behavior::fixed(200, "slow"),
    ))
    .await
    .unwrap();
    let mut gw = Gateway::start(
        &[&scenario("s1-http")],
        &[
            "--connect-to".into(),
            format!("edition.cnn.com:80:{}", up.addr()),
            "--drain-delay".into(),
            "1s".into(),
        ],
    )
    .await;
    let addr = gw.http;
    let req = tokio::spawn(async move { http1_get(addr, "edition.cnn.com", "/slow", &[]).await });
    for _ in 0..400 {
        if up.connections() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.process.signal("TERM").await.unwrap();
    let mut saw_not_ready = false;
    for _ in 0..200 {
        match http1_get(gw.health, "localhost", "/healthz/ready", &[]).await {
            Ok(r) if r.status == 503 => {
                saw_not_ready = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => break,
        }
    }
    assert!(
        saw_not_ready,
        "readiness never turned false during the drain"
    );
    assert_eq!(req.await.unwrap().unwrap().status, 200);
    assert!(gw
        .process
        .wait_exit(Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));
}

#[tokio::test]
async fn demo_runs_the_four_scenarios_and_stays_up_until_ctrl_c() {
    let mut demo = egret_test_support::EgretProcess::spawn(
        env!("CARGO_BIN_EXE_egret"),
        &["demo", "--ephemeral-ports"],
    )
    .unwrap();
    let banner = demo
        .wait_for_log(Duration::from_secs(60), |l| l.contains("egret demo ready"))
        .await;
    let out = demo.log_lines().join("\n");
    assert!(
        banner.is_some(),
        "no ready banner; stdout:\n{out}\nstderr:\n{}",
        demo.stderr()
    );
    assert!(out.contains("4/4 scenarios passed"), "{out}");
    for needle in [
        "\"GET /politics HTTP/1.1\" 301",
        "outbound|443||edition.cnn.com",
        "outbound|443||my-nginx.mesh-external.svc.cluster.local",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    demo.signal("INT").await.unwrap();
    let status = demo
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("demo exits on Ctrl-C");
    assert!(status.success(), "{status:?}");
}

/// Polls stderr until it contains `needle` (bounded), panicking with the log otherwise.
async fn wait_stderr(gw: &Gateway, needle: &str) {
    for _ in 0..800 {
        if gw.process.stderr().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no {needle:?} on stderr:\n{}", gw.process.stderr());
}

/// The probes while nothing is configured: health 503, admin `/ready` 503 `INITIALIZING`
/// (Envoy's state while it waits for its first xDS), no listener accepting.
async fn assert_waiting(gw: &Gateway) {
    let health = http1_get(gw.health, "localhost", "/healthz/ready", &[])
        .await
        .unwrap();
    assert_eq!(health.status, 503, "{}", gw.process.stderr());
    let ready = http1_get(gw.admin, "localhost", "/ready", &[])
        .await
        .unwrap();
    assert_eq!(
        (ready.status.as_u16(), ready.text().trim()),
        (503, "INITIALIZING")
    );
    assert!(
        tokio::net::TcpStream::connect(gw.http).await.is_err(),
        "a listener accepts before the configuration is there"
    );
}

/// Istio's gateway pod is not ready until it has its configuration and its listeners are
/// bound. With a ConfigMap mount that is still empty, Egret starts its admin, health and
/// Prometheus servers, says what it waits for, and turns ready only once Istio resources that
/// compile appear: a file without any, or a broken one, keeps it waiting.
#[tokio::test]
async fn not_ready_until_the_first_configuration_appears() {
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let dir = config_dir("waiting", &[]);
    let extra = vec![
        "--connect-to".to_string(),
        format!("edition.cnn.com:80:{}", up.addr()),
        "--watch-interval".to_string(),
        "100ms".to_string(),
        "--log-level".to_string(),
        "info,egret=debug".to_string(),
    ];
    let mut gw =
        Gateway::start_until(&[dir.path()], &extra, &[], "waiting for configuration in").await;
    let stderr = gw.process.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("waiting for configuration in"))
        .unwrap();
    assert!(line.contains(&dir.path().display().to_string()), "{line}");
    assert!(line.contains("WARN"), "{line}");
    assert_waiting(&gw).await;
    let prom = http1_get(gw.prometheus, "localhost", "/stats/prometheus", &[])
        .await
        .unwrap()
        .text();
    assert!(!prom.contains("egret_config_version_info"), "{prom}");

    // A YAML file without Istio resources (a comment, another kind): still waiting.
    dir.write(
        "00-other.yaml",
        b"# filled in by the pipeline\napiVersion: v1\nkind: Service\nmetadata: { name: other }\n",
    )
    .unwrap();
    wait_stderr(&gw, "no Istio networking resources in 1 YAML file(s)").await;
    assert_waiting(&gw).await;

    // A broken configuration: logged with file and line, counted, still waiting.
    dir.write(
        "05-broken.yaml",
        b"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: b }\nspec:\n  hosts: [\n",
    )
    .unwrap();
    wait_stderr(&gw, "does not compile; still waiting").await;
    assert!(gw.process.stderr().contains("05-broken.yaml:"));
    assert_waiting(&gw).await;
    let prom = http1_get(gw.prometheus, "localhost", "/stats/prometheus", &[])
        .await
        .unwrap()
        .text();
    assert!(
        prom.contains("egret_config_reloads_total{result=\"failure\"} 1"),
        "{prom}"
    );

    // The configuration arrives: listeners bind, the pod turns ready, requests route.
    std::fs::remove_file(dir.join("05-broken.yaml")).unwrap();
    copy_s1(&dir);
    let mut ready = false;
    for _ in 0..800 {
        if http1_get(gw.health, "localhost", "/healthz/ready", &[])
            .await
            .unwrap()
            .status
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "never ready; stderr:\n{}", gw.process.stderr());
    assert!(gw.process.stderr().contains("egret ready"));
    let ready = http1_get(gw.admin, "localhost", "/ready", &[])
        .await
        .unwrap();
    assert_eq!((ready.status.as_u16(), ready.text().trim()), (200, "LIVE"));
    let r = http1_get(gw.http, "edition.cnn.com", "/politics", &[])
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    let l = gw.next_line().await;
    assert_eq!(
        (l.path.as_str(), l.code.as_str(), l.cluster.as_str()),
        ("/politics", "200", "outbound|80||edition.cnn.com")
    );
    let dump = http1_get(gw.admin, "localhost", "/config_dump", &[])
        .await
        .unwrap()
        .json();
    assert_eq!(dump["version"].as_str().map(str::len), Some(12));
}

/// SIGTERM while waiting for the first configuration: a clean exit.
#[tokio::test]
async fn sigterm_while_waiting_for_configuration_exits_zero() {
    let dir = config_dir("waiting-term", &[]);
    // A file path of a ConfigMap key that has not appeared yet.
    let missing = dir.join("istio.yaml");
    let mut gw = Gateway::start_until(&[&missing], &[], &[], "waiting for configuration in").await;
    assert!(gw.process.stderr().contains("(not found)"));
    assert_waiting(&gw).await;
    gw.process.signal("TERM").await.unwrap();
    let status = gw
        .process
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("egret exits");
    assert!(status.success(), "{status:?}");
}

/// A configuration that is there but broken is still a startup error (exit 1, file:line).
#[tokio::test]
async fn broken_first_configuration_is_a_startup_error() {
    let dir = config_dir(
        "broken-start",
        &[("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: b }\nspec:\n  hosts: [\n")],
    );
    let mut p = egret_test_support::EgretProcess::spawn(
        env!("CARGO_BIN_EXE_egret"),
        &[
            "run",
            "--config",
            &dir.path().display().to_string(),
            "--admin",
            "off",
            "--health",
            "off",
            "--prometheus",
            "off",
        ],
    )
    .unwrap();
    let status = p
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("egret exits");
    assert_eq!(status.code(), Some(1), "stderr:\n{}", p.stderr());
    // stderr is read by a separate task, which may still be catching up with the exit.
    for _ in 0..400 {
        if p.stderr().contains("configuration error(s)") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(p.stderr().contains("vs.yaml:"), "{}", p.stderr());
}

/// `/clusters` shows each endpoint's totals in Envoy's text form (`cluster::host::stat::N`)
/// and in Envoy's JSON form: after a known sequence of requests the counts are exact.
#[tokio::test]
async fn clusters_show_endpoint_totals() {
    let up = HttpUpstream::start(Behavior::dynamic(|r| {
        if r.path == "/fail" {
            // Not retried by Istio's default policy (503 would be).
            Behavior::fixed(500, "boom")
        } else {
            Behavior::fixed(200, "ok")
        }
    }))
    .await
    .unwrap();
    let gw = Gateway::start(
        &[&scenario("s1-http")],
        &[
            "--connect-to".into(),
            format!("edition.cnn.com:80:{}", up.addr()),
        ],
    )
    .await;
    const N: usize = 5;
    for i in 0..N {
        let path = if i == N - 1 { "/fail" } else { "/" };
        let r = http1_get(gw.http, "edition.cnn.com", path, &[])
            .await
            .unwrap();
        assert_eq!(r.status, if i == N - 1 { 500 } else { 200 });
    }
    let clusters = http1_get(gw.admin, "localhost", "/clusters", &[])
        .await
        .unwrap()
        .text();
    let host = format!("outbound|80||edition.cnn.com::{}", up.addr());
    // Every connection the upstream accepted was opened by this cluster for this endpoint
    // (how many depends on keep-alive timing, so it is read from the upstream).
    let cx = up.connections();
    assert!((1..=N).contains(&cx), "{cx}");
    for expected in [
        format!("{host}::cx_connect_fail::0"),
        format!("{host}::cx_total::{cx}"),
        format!("{host}::rq_active::0"),
        format!("{host}::rq_error::1"),
        format!("{host}::rq_success::{}", N - 1),
        format!("{host}::rq_timeout::0"),
        format!("{host}::rq_total::{N}"),
        format!("{host}::hostname::edition.cnn.com"),
        format!("{host}::health_flags::healthy"),
    ] {
        assert!(
            clusters.lines().any(|l| l == expected),
            "missing {expected:?} in:\n{clusters}"
        );
    }

    let json = http1_get(gw.admin, "localhost", "/clusters?format=json", &[])
        .await
        .unwrap()
        .json();
    let cluster = &json["cluster_statuses"][0];
    assert_eq!(cluster["name"], "outbound|80||edition.cnn.com");
    let h = &cluster["host_statuses"][0];
    assert_eq!(
        h["address"]["socket_address"]["port_value"],
        up.addr().port()
    );
    let stat = |name: &str| {
        h["stats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["value"].as_u64().unwrap())
    };
    assert_eq!(stat("rq_total"), Some(N as u64));
    assert_eq!(stat("rq_success"), Some(N as u64 - 1));
    assert_eq!(stat("rq_error"), Some(1));
    assert_eq!(stat("cx_total"), Some(cx as u64));
    // Zero-valued statistics are left out, as Envoy does.
    assert_eq!(stat("cx_connect_fail"), None);
    assert_eq!(h["health_status"]["eds_health_status"], "HEALTHY");
}

/// Thread-per-core: each connection is handed to the worker with the fewest open
/// connections, and each worker keeps its own upstream connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_workers_with_a_pool_each() {
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let gw = Gateway::start(
        &[&scenario("s1-http")],
        &[
            "--workers".into(),
            "3".into(),
            "--connect-to".into(),
            format!("edition.cnn.com:80:{}", up.addr()),
        ],
    )
    .await;
    // Held open, so each new connection finds the previous workers busy.
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = Http1Conn::connect(gw.http).await.unwrap();
        let r = c.get("edition.cnn.com", "/", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        conns.push(c);
    }
    let prom = http1_get(gw.prometheus, "localhost", "/stats/prometheus", &[])
        .await
        .unwrap()
        .text();
    for worker in 0..3 {
        for family in [
            "egret_worker_downstream_cx_total",
            "egret_worker_downstream_cx_active",
        ] {
            let line = format!("{family}{{worker=\"{worker}\"}} 1");
            assert!(
                prom.lines().any(|l| l == line),
                "missing {line:?} in:\n{prom}"
            );
        }
    }
    // One upstream connection per worker (a shared pool would have reused one), each reused
    // by the next request of the same worker.
    assert_eq!(up.connections(), 3);
    for c in &mut conns {
        let r = c.get("edition.cnn.com", "/", &[]).await.unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.connections(), 3);
}

/// Envoy's HTTP idle timeout (`--http-idle-timeout`, 1 h by default): a keep-alive connection
/// with no request in progress, and one that never sent a request, are closed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_are_closed_after_the_idle_timeout() {
    use tokio::io::AsyncReadExt as _;
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let gw = Gateway::start(
        &[&scenario("s1-http")],
        &[
            "--http-idle-timeout".into(),
            "1s".into(),
            "--connect-to".into(),
            format!("edition.cnn.com:80:{}", up.addr()),
        ],
    )
    .await;
    let mut used = Http1Conn::connect(gw.http).await.unwrap();
    let r = used.get("edition.cnn.com", "/", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    // HTTP/2 too (Envoy's idle timeout covers it; hyper's server has none).
    let mut h2 = H2Conn::connect(gw.http).await.unwrap();
    assert_eq!(
        h2.get("edition.cnn.com", "/", &[]).await.unwrap().status,
        200
    );
    let mut silent = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    // Hang guards only: the timeout is 1 s.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buf))
        .await
        .expect("a silent connection is closed")
        .unwrap();
    assert_eq!(n, 0, "closed without a response");
    for _ in 0..600 {
        if used.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(used.is_closed(), "an idle keep-alive connection is closed");
    for _ in 0..600 {
        if h2.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h2.is_closed(), "an idle HTTP/2 connection is closed");
}

/// Idle HTTP/1.1 connections release hyper's buffers and rebuild them for the next request
/// (`--http-buffer-release-delay`). Whatever arrives around a release is served as before:
/// pipelined requests, a request head cut short when the release comes, a request with a
/// body; a connection the client asks to close is still closed after its response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connections_release_and_rebuild_their_buffers() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let mut gw = s1_with_release_delay("300ms", up.addr()).await;
    let prometheus = gw.prometheus;
    let released = |n: u64| {
        counter_reaches(
            prometheus,
            "egret_downstream_http1_buffer_releases_total",
            n,
        )
    };
    const GET: &str = "GET / HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n";
    let mut c = RawConn::connect(gw.http).await;

    c.send(GET).await;
    assert_eq!(c.response().await, (200, "ok".to_string()));
    released(1).await;
    // Two requests in one write, on a released connection.
    c.send(&format!("{GET}{GET}")).await;
    assert_eq!(c.response().await.0, 200);
    assert_eq!(c.response().await.0, 200);
    released(2).await;
    // Half a request head arrives before the release and the rest after it.
    c.send(GET).await;
    assert_eq!(c.response().await.0, 200);
    c.send("GET / HTTP/1.1\r\nHo").await;
    released(3).await;
    c.send("st: edition.cnn.com\r\n\r\n").await;
    assert_eq!(c.response().await, (200, "ok".to_string()));
    released(4).await;
    // A request with a body, then one without.
    c.send("POST / HTTP/1.1\r\nHost: edition.cnn.com\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(c.response().await.0, 200);
    c.send(GET).await;
    assert_eq!(c.response().await.0, 200);
    released(5).await;
    // Asked to close: answered, then closed.
    c.send("GET / HTTP/1.1\r\nHost: edition.cnn.com\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(c.response().await.0, 200);
    assert!(c.at_end().await, "closed after `Connection: close`");
    // HTTP/1.0: refused as Envoy refuses it (`426`), then closed.
    let mut old = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    old.write_all(b"GET / HTTP/1.0\r\nHost: edition.cnn.com\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), old.read_to_end(&mut all))
        .await
        .expect("HTTP/1.0 response ends with the connection")
        .unwrap();
    let all = String::from_utf8_lossy(&all);
    // Envoy 1.40's codec answers in HTTP/1.1 (checked with it).
    assert!(all.starts_with("HTTP/1.1 426"), "{all}");
    assert!(all.ends_with("\r\n\r\nUpgrade Required"), "{all}");

    for method in ["GET", "GET", "GET", "GET", "GET", "POST", "GET", "GET"] {
        let l = gw.next_line().await;
        assert_eq!((l.method.as_str(), l.code.as_str()), (method, "200"));
    }
    let l = gw.next_line().await;
    assert_eq!((l.method.as_str(), l.code.as_str()), ("-", "426"));
    drop(gw);

    // An upgrade offer that gets no 101 (curl's `h2c` offer, a WebSocket to a host with no
    // route) leaves hyper holding a pending upgrade: such a connection must stay usable,
    // not be handed to that upgrade when idle (releases right after each response here).
    let mut gw = s1_with_release_delay("0s", up.addr()).await;
    let mut c = RawConn::connect(gw.http).await;
    c.send("GET / HTTP/1.1\r\nHost: edition.cnn.com\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        .await;
    assert_eq!(c.response().await, (200, "ok".to_string()));
    c.send(GET).await;
    assert_eq!(c.response().await, (200, "ok".to_string()));
    let mut c = RawConn::connect(gw.http).await;
    c.send("GET /ws HTTP/1.1\r\nHost: nowhere.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await;
    assert_eq!(c.response().await.0, 404);
    c.send(GET).await;
    assert_eq!(c.response().await, (200, "ok".to_string()));
    for code in ["200", "200", "404", "200"] {
        assert_eq!(gw.next_line().await.code, code);
    }
}

/// The S1 gateway in front of `upstream`, releasing idle connections' HTTP state after
/// `delay`.
/// The heap is trimmed once the gateway goes quiet (`--heap-trim-delay`): once after start,
/// once after traffic stops, and not again while nothing happens; `0s` turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heap_is_trimmed_once_per_quiet_period() {
    if !egret::heap::AVAILABLE {
        return; // not glibc's allocator: nothing to trim
    }
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let start = |delay: &'static str| {
        let upstream = up.addr();
        async move {
            Gateway::start(
                &[&scenario("s1-http")],
                &[
                    "--heap-trim-delay".into(),
                    delay.into(),
                    "--connect-to".into(),
                    format!("edition.cnn.com:80:{upstream}"),
                ],
            )
            .await
        }
    };
    let trims = |prometheus: std::net::SocketAddr| async move {
        let prom = http1_get(prometheus, "localhost", "/stats/prometheus", &[])
            .await
            .unwrap()
            .text();
        prom.lines()
            .find_map(|l| l.strip_prefix("egret_heap_trims_total "))
            .map(|v| v.parse::<u64>().unwrap())
    };
    // Waits (hang guard only) until `n` trims have been counted.
    let trimmed = |prometheus, n: u64| async move {
        for _ in 0..600 {
            if trims(prometheus).await.is_some_and(|c| c >= n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no trim #{n}");
    };
    let gw = start("200ms").await;
    trimmed(gw.prometheus, 1).await;
    // Nothing happens on the data path (scrapes are not traffic): no second trim.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        trims(gw.prometheus).await,
        Some(1),
        "one trim per quiet period"
    );
    let mut c = Http1Conn::connect(gw.http).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            c.get("edition.cnn.com", "/", &[]).await.unwrap().status,
            200
        );
    }
    trimmed(gw.prometheus, 2).await;
    drop(gw);

    let off = start("0s").await;
    let mut c = Http1Conn::connect(off.http).await.unwrap();
    assert_eq!(
        c.get("edition.cnn.com", "/", &[]).await.unwrap().status,
        200
    );
    assert_eq!(trims(off.prometheus).await, None, "no trimmer with 0s");
}

/// Requests with bodies of each framing, pipelined in one write with requests without, are
/// answered in order, each body reaching the upstream whole: the codec reads a body to its
/// end and no further, and what follows is the next request.
#[tokio::test]
async fn pipelined_requests_with_bodies_are_answered_in_order() {
    let up = HttpUpstream::start(Behavior::EchoBody).await.unwrap();
    let mut gw = s1_with_release_delay("100ms", up.addr()).await;
    let host = "Host: edition.cnn.com\r\n";
    let mut c = RawConn::connect(gw.http).await;
    c.send(&format!(
        "POST /a HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nhello\
         GET /b HTTP/1.1\r\n{host}\r\n\
         POST /c HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nx-t: 1\r\n\r\n\
         POST /d HTTP/1.1\r\n{host}Content-Length: 2\r\nExpect: 100-continue\r\n\r\nok"
    ))
    .await;
    assert_eq!(c.response().await, (200, "hello".to_string()));
    assert_eq!(c.response().await, (200, String::new()));
    assert_eq!(c.response().await, (200, "abcde".to_string()));
    // The `100 Continue` owed to the last one comes first (its body had already arrived).
    assert_eq!(c.response().await, (100, String::new()));
    assert_eq!(c.response().await, (200, "ok".to_string()));
    for (path, received) in [("/a", "5"), ("/b", "0"), ("/c", "5"), ("/d", "2")] {
        let l = gw.next_line().await;
        assert_eq!((l.path.as_str(), l.code.as_str()), (path, "200"));
        assert_eq!(l.bytes_received.to_string(), received, "{path}");
    }
    assert_eq!(up.requests(), 4);
}

/// Waits (hang guard only) until the Prometheus counter `name` has reached `n`.
async fn counter_reaches(prometheus: std::net::SocketAddr, name: &str, n: u64) {
    let prefix = format!("{name} ");
    for _ in 0..1200 {
        let prom = http1_get(prometheus, "localhost", "/stats/prometheus", &[])
            .await
            .unwrap()
            .text();
        let count = prom
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| v.parse::<u64>().unwrap());
        if count.is_some_and(|c| c >= n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} did not reach {n}");
}

/// A pooled HTTP/1.1 upstream connection that stays idle across a sweep of the pool (1-2 s)
/// frees its read buffer, then serves the next request as before: same upstream connection,
/// same response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_upstream_connections_release_their_read_buffer() {
    const GET: &str = "GET / HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n";
    let up = HttpUpstream::start(Behavior::fixed(200, "ok"))
        .await
        .unwrap();
    let mut gw = Gateway::start(
        &[&scenario("s1-http")],
        &[
            "--connect-to".into(),
            format!("edition.cnn.com:80:{}", up.addr()),
        ],
    )
    .await;
    let mut c = RawConn::connect(gw.http).await;
    c.send(GET).await;
    assert_eq!(c.response().await, (200, "ok".to_string()));
    counter_reaches(
        gw.prometheus,
        "egret_upstream_http1_buffer_releases_total",
        1,
    )
    .await;
    c.send(GET).await;
    assert_eq!(c.response().await, (200, "ok".to_string()));
    assert_eq!(up.connections(), 1, "the released connection is reused");
    assert_eq!(up.requests(), 2);
    for _ in 0..2 {
        let l = gw.next_line().await;
        assert_eq!((l.code.as_str(), l.flags.as_str()), ("200", "-"));
    }
}

async fn s1_with_release_delay(delay: &str, upstream: std::net::SocketAddr) -> Gateway {
    Gateway::start(
        &[&scenario("s1-http")],
        &[
            "--http-buffer-release-delay".into(),
            delay.into(),
            "--connect-to".into(),
            format!("edition.cnn.com:80:{upstream}"),
        ],
    )
    .await
}

/// A raw HTTP/1.1 client connection: writes what it is given, reads responses framed by
/// `content-length`, keeping bytes read past one response for the next.
struct RawConn {
    sock: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    async fn connect(addr: std::net::SocketAddr) -> RawConn {
        RawConn {
            sock: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &str) {
        use tokio::io::AsyncWriteExt as _;
        self.sock.write_all(bytes.as_bytes()).await.unwrap();
    }

    async fn fill(&mut self) -> usize {
        use tokio::io::AsyncReadExt as _;
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(60), self.sock.read(&mut chunk))
            .await
            .expect("response in time (hang guard)")
            .unwrap();
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Status and body of the next response.
    async fn response(&mut self) -> (u16, String) {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.fill().await > 0, "connection closed before a response");
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while self.buf.len() < head_end + len {
            assert!(self.fill().await > 0, "connection closed in a body");
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + len]).into_owned();
        self.buf.drain(..head_end + len);
        (status, body)
    }

    /// Whether the gateway closed the connection with nothing more to read.
    async fn at_end(&mut self) -> bool {
        self.buf.is_empty() && self.fill().await == 0
    }
}
