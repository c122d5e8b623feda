//! The little HTTP/1.1 the test endpoints need: one message with a
//! `Content-Length` body at a time.

use std::io::{BufRead, BufReader, Read};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// The value of header `name` (any case) in a message head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads one HTTP message (head and `Content-Length` body); `None` at EOF.
pub fn read_message(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" && !head.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(
        header(&head, "transfer-encoding").is_none(),
        "only Content-Length bodies are understood here:\n{head}"
    );
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// Waits for the next request on a keep-alive connection and reads it,
/// checking `stop` every 200 ms while idle (then the connection is shut
/// down). `None` at EOF, on a broken connection, or when stopped.
pub fn next_request(
    reader: &mut BufReader<TcpStream>,
    stop: impl Fn() -> bool,
) -> Option<(String, Vec<u8>)> {
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)));
    loop {
        if stop() {
            let _ = reader.get_ref().shutdown(Shutdown::Both);
            return None;
        }
        match reader.fill_buf() {
            Ok([]) => return None,
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)));
    read_message(reader)
}
