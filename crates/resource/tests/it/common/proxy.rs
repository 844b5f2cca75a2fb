//! A fault-injecting HTTP proxy in front of a real plain-HTTP registry: it forwards requests
//! (one per connection) and, when a rule matches, answers with a status, resets the
//! connection, or cuts the body short. Every request is recorded for counting.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use super::http::{read_body, read_head, respond};

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status, extra headers and body.
    Status(u16, Vec<(String, String)>, String),
    /// Close the connection without an answer.
    Reset,
    /// Forward, but send only the first N bytes of the body, then close.
    Truncate(usize),
    /// Forward, without this response header.
    StripHeader(String),
}

struct Rule {
    path_contains: String,
    method: Option<String>,
    remaining: usize,
    fault: Fault,
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
}

pub struct FaultProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                let upstream = upstream.clone();
                std::thread::spawn(move || handle(stream, &upstream, &state));
            }
        });
        FaultProxy { port, state }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The next `times` requests whose path contains `path_contains` (and whose method is
    /// `method`, when given) get `fault`.
    pub fn add(&self, path_contains: &str, method: Option<&str>, times: usize, fault: Fault) {
        self.state.lock().unwrap().rules.push(Rule {
            path_contains: path_contains.into(),
            method: method.map(str::to_string),
            remaining: times,
            fault,
        });
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn clear(&self) {
        let mut s = self.state.lock().unwrap();
        s.rules.clear();
        s.seen.clear();
    }
}

fn handle(client: TcpStream, upstream: &str, state: &Mutex<State>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut client = client;
    let Some(head) = read_head(&mut reader) else {
        return;
    };
    let body = read_body(&mut reader, &head);
    let fault = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            method: head.method.clone(),
            target: head.target.clone(),
        });
        let rule = s.rules.iter_mut().find(|r| {
            r.remaining > 0
                && head.target.contains(&r.path_contains)
                && r.method.as_ref().is_none_or(|m| *m == head.method)
        });
        rule.map(|r| {
            r.remaining -= 1;
            r.fault.clone()
        })
    };
    match fault {
        Some(Fault::Status(code, headers, text)) => {
            let headers: Vec<(&str, String)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            respond(&mut client, code, &headers, text.as_bytes());
            return;
        }
        Some(Fault::Reset) => {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        _ => {}
    }
    let Ok(mut up) = TcpStream::connect(upstream) else {
        respond(&mut client, 502, &[], b"upstream down");
        return;
    };
    // Same head, but one request per connection.
    let mut out = format!("{} {} HTTP/1.1\r\n", head.method, head.target);
    for (k, v) in &head.headers {
        if !k.eq_ignore_ascii_case("connection") {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    if up.write_all(out.as_bytes()).is_err() || up.write_all(&body).is_err() {
        return;
    }
    let mut up_reader = BufReader::new(up);
    // Response head, forwarded as is.
    let mut head_bytes = Vec::new();
    loop {
        let mut line = Vec::new();
        if up_reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            break;
        }
        head_bytes.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    if let Some(Fault::StripHeader(name)) = &fault {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        let text = String::from_utf8_lossy(&head_bytes).into_owned();
        head_bytes = text
            .split_inclusive('\n')
            .filter(|line| !line.to_ascii_lowercase().starts_with(&prefix))
            .collect::<String>()
            .into_bytes();
    }
    if client.write_all(&head_bytes).is_err() {
        return;
    }
    let limit = match fault {
        Some(Fault::Truncate(n)) => Some(n),
        _ => None,
    };
    let mut sent = 0usize;
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match up_reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = match limit {
            Some(l) if sent + n >= l => {
                let _ = client.write_all(&buf[..l - sent]);
                break;
            }
            _ => n,
        };
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
    }
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Both);
}
