//! `fake-iot [--port N]`: the local IoT Analytics and IoT SiteWise fake of
//! `stream_manager_tests::fake_iot`, on 127.0.0.1 (port 0 or none: a free
//! one), until killed. Inspect and steer it over HTTP under `/_fake/`
//! (`requests`, `state`, `reset`, `faults`, `channels`, `assets`, `aliases`).

use std::io::Write;

use stream_manager_tests::fake_iot::FakeIot;

fn usage() -> ! {
    eprintln!("usage: fake-iot [--port N]");
    std::process::exit(2);
}

fn main() {
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" | "-p" => {
                port = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
            }
            "--help" | "-h" => usage(),
            _ => {
                if let Some(v) = arg.strip_prefix("--port=") {
                    port = v.parse().unwrap_or_else(|_| usage());
                } else {
                    usage();
                }
            }
        }
    }
    let fake = FakeIot::start_on(port);
    println!("fake-iot listening on 127.0.0.1:{}", fake.port);
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
