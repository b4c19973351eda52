//! A small HTTP server that answers as a test scripts it: for what a real registry cannot be
//! made to do (wrong bytes for a digest, endless bodies, redirect loops, token services that
//! hang or that should never be asked). Every request it receives is recorded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Result;
use crate::error::Error;

/// A request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path with its query, as sent.
    pub path: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A status, headers and a body sent with its Content-Length.
    Full {
        /// The HTTP status.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// The body.
        body: Vec<u8>,
    },
    /// A status and a body that never ends (chunked, no Content-Length), until the client
    /// hangs up.
    Endless {
        /// The HTTP status.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// A status and a Content-Length of `length` bytes, of which the server sends as many as
    /// the client reads.
    Huge {
        /// The HTTP status.
        status: u16,
        /// The announced length.
        length: u64,
    },
    /// No answer at all; the connection stays open until the server is dropped.
    Hang,
}

impl Reply {
    /// `status` with `body`.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A JSON body with status 200 and the given content type.
    pub fn json(content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("Content-Type".to_owned(), content_type.to_owned())],
            body: body.into(),
        }
    }

    /// This reply with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Full { headers, .. } | Reply::Endless { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// The server; it stops when dropped.
pub struct HostileServer {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostileServer {
    /// Listens on `ip` (a loopback address such as `127.0.0.1` or `127.0.0.2`) on a free port
    /// and answers every request with `handler`.
    pub fn start(
        ip: &str,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Result<HostileServer> {
        let listener = TcpListener::bind((ip, 0)).map_err(|e| Error::Io {
            path: format!("listen on {ip}").into(),
            error: e,
        })?;
        let address = listener.local_addr().map_err(|e| Error::Io {
            path: "local address".into(),
            error: e,
        })?;
        listener.set_nonblocking(true).map_err(|e| Error::Io {
            path: "listener".into(),
            error: e,
        })?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let (requests, stop) = (Arc::clone(&requests), Arc::clone(&stop));
            std::thread::spawn(move || accept(listener, handler, requests, stop))
        };
        Ok(HostileServer {
            address,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// `ip:port`.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept(
    listener: TcpListener,
    handler: Arc<Handler>,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (handler, requests, stop) = (
                    Arc::clone(&handler),
                    Arc::clone(&requests),
                    Arc::clone(&stop),
                );
                connections.push(std::thread::spawn(move || {
                    serve(stream, &*handler, &requests, &stop)
                }));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// Answers the requests of one connection (kept alive while the client wants).
fn serve(stream: TcpStream, handler: &Handler, requests: &Mutex<Vec<Request>>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    // Writes time out too, so that a client that neither reads nor hangs up (a test blocked
    // in this server's drop) cannot hold a connection thread forever.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let Ok(stream_writer) = stream.try_clone() else {
        return;
    };
    let mut writer = Patient {
        inner: stream_writer,
        stop,
    };
    let mut reader = BufReader::new(stream);
    while !stop.load(Ordering::SeqCst) {
        let request = match read_request(&mut reader, stop) {
            Some(request) => request,
            None => return,
        };
        if let Ok(mut all) = requests.lock() {
            all.push(request.clone());
        }
        let head_only = request.method == "HEAD";
        let reply = handler(&request);
        let ok = match reply {
            Reply::Full {
                status,
                headers,
                body,
            } => {
                let mut text = format!("HTTP/1.1 {status} {}\r\n", reason(status));
                for (name, value) in &headers {
                    text.push_str(&format!("{name}: {value}\r\n"));
                }
                text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                writer.write_all(text.as_bytes()).is_ok()
                    && (head_only || writer.write_all(&body).is_ok())
            }
            Reply::Endless { status, headers } => {
                let mut text = format!("HTTP/1.1 {status} {}\r\n", reason(status));
                for (name, value) in &headers {
                    text.push_str(&format!("{name}: {value}\r\n"));
                }
                text.push_str("Transfer-Encoding: chunked\r\n\r\n");
                if writer.write_all(text.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b'{'; 64 << 10];
                let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                while !stop.load(Ordering::SeqCst) && writer.write_all(&frame).is_ok() {}
                return;
            }
            Reply::Huge { status, length } => {
                let text = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Length: {length}\r\n\r\n",
                    reason(status)
                );
                if writer.write_all(text.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 << 10];
                let mut sent = 0u64;
                while sent < length && !stop.load(Ordering::SeqCst) {
                    let n = chunk.len().min((length - sent) as usize);
                    if writer.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    sent += n as u64;
                }
                true
            }
            Reply::Hang => {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
        };
        if !ok {
            return;
        }
    }
}

/// A writer that retries timed-out writes until the server stops.
struct Patient<'a> {
    inner: TcpStream,
    stop: &'a AtomicBool,
}

impl Write for Patient<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.inner.write(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.stop.load(Ordering::SeqCst) {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads one request (head and any Content-Length body); `None` at the end of the stream.
fn read_request(reader: &mut BufReader<TcpStream>, stop: &AtomicBool) -> Option<Request> {
    let mut head = Vec::new();
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) if !line.ends_with('\n') => continue,
            Ok(_) => {
                let text = std::mem::take(&mut line);
                if text == "\r\n" || text == "\n" {
                    if head.is_empty() {
                        continue;
                    }
                    break;
                }
                head.push(text.trim_end().to_owned());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    let mut parts = head.first()?.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let headers: Vec<(String, String)> = head[1..]
        .iter()
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let request = Request {
        method,
        path,
        headers,
    };
    if let Some(length) = request
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        let _ = std::io::copy(&mut reader.take(length), &mut std::io::sink());
    }
    Some(request)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    }
}
