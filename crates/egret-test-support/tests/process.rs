//! Spawning a child process: stdout lines, stderr capture, port polling, kill on drop.

use std::time::Duration;

use egret_test_support::{free_addr, free_port, EgretProcess};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn reads_stdout_lines_and_stderr() {
    let mut p = EgretProcess::spawn(
        "sh",
        &[
            "-c",
            "echo first; echo oops >&2; echo second; exec sleep 60",
        ],
    )
    .unwrap();
    assert_eq!(p.next_log_line(WAIT).await.as_deref(), Some("first"));
    assert_eq!(
        p.wait_for_log(WAIT, |l| l.starts_with("sec"))
            .await
            .as_deref(),
        Some("second")
    );
    assert_eq!(p.log_lines(), vec!["first", "second"]);
    // stderr arrives on its own pipe; wait for it by polling a bounded number of times.
    for _ in 0..400 {
        if p.stderr().contains("oops") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(p.stderr().contains("oops"));
    assert!(p.exited().is_none());
    p.signal("TERM").await.unwrap();
    assert!(p.wait_exit(WAIT).await.is_some());
}

#[tokio::test]
async fn wait_for_port_sees_a_listener_and_reports_early_exit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut p = EgretProcess::spawn("sleep", &["60"]).unwrap();
    p.wait_for_port(listener.local_addr().unwrap())
        .await
        .unwrap();
    p.kill().await.unwrap();

    let mut dead =
        EgretProcess::spawn("sh", &["-c", "echo 'bad config: x.yaml:3' >&2; exit 3"]).unwrap();
    let err = dead
        .wait_for_port(free_addr())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad config: x.yaml:3"), "{err}");
}

#[tokio::test]
async fn wait_for_port_gives_up_after_its_tries() {
    let mut p = EgretProcess::spawn("sleep", &["60"]).unwrap();
    let addr = free_addr();
    assert!(p.wait_for_port_tries(addr, 3).await.is_err());
    assert_ne!(free_port(), 0);
}
