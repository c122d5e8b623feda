//! The Prometheus harness itself: a real Prometheus scrapes a fixed
//! exposition from a tiny HTTP server of the test and answers a query with
//! its value and labels; a target that refuses connections shows its scrape
//! error when a wait times out; `promtool check metrics` accepts the
//! exposition and rejects broken or badly named ones.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use stream_manager_tests::aws::free_port;
use stream_manager_tests::http::read_message;
use stream_manager_tests::prometheus::{promtool_check_metrics, Prometheus};

const EXPOSITION: &str = "# HELP demo_lag_seconds How far the export is behind.\n\
                          # TYPE demo_lag_seconds gauge\n\
                          demo_lag_seconds{export=\"e1\"} 42\n";

/// Serves `GET /metrics` with `body` on 127.0.0.1 (keep-alive, one thread
/// per connection) until the test ends; returns the port.
fn serve_metrics(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || answer(conn, body));
        }
    });
    port
}

fn answer(conn: TcpStream, body: &str) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    while let Some((head, _)) = read_message(&mut reader) {
        let reply = if head.starts_with("GET /metrics ") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
        };
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn prometheus_scrapes_and_answers_queries() {
    let started = Instant::now();
    let good = format!("127.0.0.1:{}", serve_metrics(EXPOSITION));
    // Nothing listens there: its scrapes fail with "connection refused".
    let dead = format!("127.0.0.1:{}", free_port());
    let prom = Prometheus::start(&[good.clone(), dead.clone()], Duration::from_secs(1))
        .expect("start prometheus");

    let found = prom
        .wait_for("demo_lag_seconds", Duration::from_secs(10), |v| {
            !v.is_empty()
        })
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let (labels, value) = &found[0];
    assert_eq!(*value, 42.0);
    assert_eq!(labels["__name__"], "demo_lag_seconds");
    assert_eq!(labels["export"], "e1");
    assert_eq!(labels["job"], "stream-manager");
    assert_eq!(labels["instance"], good);

    // Queries with functions and label matchers, encoded in the URL.
    let sum = prom
        .query(r#"sum by (export) (demo_lag_seconds{export=~"e.*"}) * 2"#)
        .unwrap();
    assert_eq!(sum.len(), 1, "{sum:?}");
    assert_eq!(sum[0].0.get("export").map(String::as_str), Some("e1"));
    assert_eq!(sum[0].1, 84.0);
    assert_eq!(
        prom.query("scalar(demo_lag_seconds) + 1").unwrap()[0].1,
        43.0
    );

    // Prometheus kept the HELP and TYPE lines.
    let meta = prom.metadata("demo_lag_seconds").unwrap();
    assert!(
        meta.iter()
            .any(|m| m.kind == "gauge" && m.help == "How far the export is behind."),
        "{meta:?}"
    );

    // `up` of both targets, and the dead one's scrape error in a timeout.
    let up = prom
        .wait_for("up", Duration::from_secs(5), |v| v.len() == 2)
        .unwrap();
    for (labels, value) in &up {
        let want = if labels["instance"] == good { 1.0 } else { 0.0 };
        assert_eq!(*value, want, "{up:?}");
    }
    let targets = prom.targets().unwrap();
    let down = targets.iter().find(|t| t.scrape_url.contains(&dead));
    assert!(
        down.is_some_and(|t| t.health == "down" && t.last_error.contains("connection refused")),
        "{targets:?}"
    );
    let err = prom
        .wait_for(
            &format!(r#"up{{instance="{dead}"}} == 1"#),
            Duration::from_secs(1),
            |v| !v.is_empty(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("connection refused"), "{err}");
    let err = prom
        .wait_targets_up(Duration::from_millis(500))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&dead) && err.contains("connection refused"),
        "{err}"
    );

    // Invalid PromQL fails at once, with Prometheus's reason.
    let t = Instant::now();
    let err = prom
        .wait_for("sum(", Duration::from_secs(10), |_| true)
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(format!("{err:#}").contains("bad_data"), "{err:#}");

    println!("took {:?}", started.elapsed());
}

#[test]
fn promtool_checks_expositions() {
    promtool_check_metrics(EXPOSITION).unwrap();
    promtool_check_metrics(
        "# HELP demo_appends_total Appends.\n\
         # TYPE demo_appends_total counter\n\
         demo_appends_total{stream=\"s\"} 7\n",
    )
    .unwrap();

    // Not parseable: a label set that is never closed.
    let err = promtool_check_metrics(
        "# HELP demo_lag_seconds Lag.\n# TYPE demo_lag_seconds gauge\ndemo_lag_seconds{export=\"e1\" 42\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("parsing error"), "{err}");

    // Parseable, but lint problems fail too.
    for (text, problem) in [
        (
            "# HELP demo_appends Appends.\n# TYPE demo_appends counter\ndemo_appends 7\n",
            "should have \"_total\" suffix",
        ),
        ("demo_lag_seconds 42\n", "no help text"),
        (
            "# HELP demo_lag_milliseconds Lag.\n# TYPE demo_lag_milliseconds gauge\ndemo_lag_milliseconds 1\n",
            "use base unit \"seconds\"",
        ),
    ] {
        let err = promtool_check_metrics(text).unwrap_err().to_string();
        assert!(err.contains(problem), "{text}: {err}");
    }
}
