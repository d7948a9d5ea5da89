//! The one HTTP client of weftd's pod core (the manifest URL, httpGet probes), over `ureq`:
//! blocking (each caller already runs on a thread of its own), one total deadline per request
//! (connect, TLS, headers and body together, so a server dripping a byte at a time gets no
//! longer), a cap on the body, no proxy from the environment, HTTPS through rustls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// Room for the status line and headers (ureq's default, stated so it cannot drift).
const MAX_HEADER_BYTES: usize = 64 << 10;

/// A failed request, naming the URL (or address) and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is neither `http://` nor `https://`, or carries credentials.
    #[error("URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The CA file could not be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No complete answer within the deadline.
    #[error("GET {url}: no complete answer within {deadline:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The total deadline.
        deadline: Duration,
    },
    /// The body is over the cap.
    #[error("GET {url}: body is over the {limit}-byte limit")]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        limit: u64,
    },
    /// The server answered with a status that is not accepted.
    #[error("GET {url}: HTTP status {code}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        code: u16,
    },
    /// Connecting, TLS, or the exchange failed.
    #[error("GET {url}: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// ureq's error.
        source: Box<ureq::Error>,
    },
}

/// Where TLS server certificates are checked against: the system's roots (read the way
/// `rustls-native-certs` finds them, e.g. `/etc/ssl/certs`) plus an optional PEM CA file.
fn root_certs(ca_file: Option<&Path>) -> Result<RootCerts, HttpError> {
    // Unreadable system roots leave only the CA file; each bad entry is skipped, not fatal.
    let mut roots: Vec<Certificate<'static>> = rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    if let Some(path) = ca_file {
        let bad = |reason: String| HttpError::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let before = roots.len();
        for item in ureq::tls::parse_pem(&pem) {
            if let PemItem::Certificate(cert) = item.map_err(|e| bad(e.to_string()))? {
                roots.push(cert);
            }
        }
        if roots.len() == before {
            return Err(bad("no PEM certificate in it".to_string()));
        }
    }
    Ok(RootCerts::Specific(Arc::new(roots)))
}

fn agent(deadline: Duration, tls: TlsConfig, redirects: u32) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(deadline))
        .http_status_as_error(false)
        .max_redirects(redirects)
        .max_redirects_will_error(false)
        .max_response_header_size(MAX_HEADER_BYTES)
        // The proxy variables of weftd's environment must not redirect node-local requests.
        .proxy(None)
        .user_agent("weftd")
        .tls_config(tls)
        .build()
        .into()
}

fn transport(url: &str, deadline: Duration, limit: u64) -> impl Fn(ureq::Error) -> HttpError {
    let url = url.to_string();
    move |e| match e {
        ureq::Error::Timeout(_) => HttpError::Timeout {
            url: url.clone(),
            deadline,
        },
        ureq::Error::BodyExceedsLimit(_) => HttpError::TooLarge {
            url: url.clone(),
            limit,
        },
        other => HttpError::Transport {
            url: url.clone(),
            source: Box::new(other),
        },
    }
}

/// The body of `GET url` (`http://` or `https://`; status 200 required; redirects followed
/// up to 5), all of it within `deadline`, refused when over `max_body` bytes. HTTPS servers
/// are checked against the system's roots and `ca_file`.
pub fn get(
    url: &str,
    deadline: Duration,
    max_body: u64,
    ca_file: Option<&Path>,
) -> Result<Vec<u8>, HttpError> {
    let authority = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or(HttpError::BadUrl {
            url: url.to_string(),
            reason: "only http:// and https:// are supported",
        })?
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::BadUrl {
            url: url.to_string(),
            reason: "bad host",
        });
    }
    let tls = TlsConfig::builder()
        .root_certs(root_certs(ca_file)?)
        .build();
    let fail = transport(url, deadline, max_body);
    let mut response = agent(deadline, tls, 5).get(url).call().map_err(&fail)?;
    let code = response.status().as_u16();
    if code != 200 {
        return Err(HttpError::Status {
            url: url.to_string(),
            code,
        });
    }
    response
        .body_mut()
        .with_config()
        .limit(max_body)
        .read_to_vec()
        .map_err(&fail)
}

/// The status code of `GET http://addr/path` within `timeout`, redirects not followed (a 3xx
/// is an answer, as kubelet's probes count it); the body is not read.
pub fn status_of(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, HttpError> {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let url = format!("http://{addr}{path}");
    let fail = transport(&url, timeout, 0);
    let response = agent(timeout, TlsConfig::default(), 0)
        .get(&url)
        .call()
        .map_err(fail)?;
    Ok(response.status().as_u16())
}

/// A one-connection-per-answer HTTP server on 127.0.0.1 for tests: it reads each request and
/// writes the next canned answer, then ends. Join the handle to see the answers all went out.
#[cfg(test)]
pub(crate) fn canned_http_server(
    answers: &'static [&'static str],
) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let server = std::thread::spawn(move || {
        for answer in answers {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            s.write_all(answer.as_bytes()).expect("write answer");
        }
    });
    (addr, server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    #[test]
    fn http_get_returns_the_body_of_a_200_only() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.0 200 OK\r\nContent-Type: text/yaml\r\n\r\nkind: Pod\n",
                "HTTP/1.0 404 Not Found\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /m.yaml HTTP/1.1\r\n"));
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/m.yaml");
        assert_eq!(
            get(&url, Duration::from_secs(2), 100, None).unwrap(),
            b"kind: Pod\n"
        );
        let e = get(&url, Duration::from_secs(2), 100, None)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("HTTP status 404"), "{e}");
        server.join().unwrap();
    }

    /// A server that answers every request with `head` and then `body`, `chunk` bytes every
    /// `pause`, until the client goes away.
    fn dripping_server(head: &'static str, body: Vec<u8>, chunk: usize, pause: Duration) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let body = body.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    if s.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    for part in body.chunks(chunk) {
                        if s.write_all(part).is_err() {
                            return;
                        }
                        std::thread::sleep(pause);
                    }
                });
            }
        });
        format!("http://127.0.0.1:{port}/pod.yaml")
    }

    #[test]
    fn http_get_has_a_total_deadline_and_a_size_cap() {
        // One byte every 300 ms for far longer than the deadline: each read succeeds in time.
        let url = dripping_server(
            "HTTP/1.0 200 OK\r\n\r\n",
            vec![b'#'; 1000],
            1,
            Duration::from_millis(300),
        );
        let e = get(&url, Duration::from_secs(1), 4096, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no complete answer within 1s"), "{e}");
        let url = dripping_server(
            "HTTP/1.0 200 OK\r\n\r\n",
            vec![b'#'; 5000],
            5000,
            Duration::ZERO,
        );
        let e = get(&url, Duration::from_secs(5), 4096, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("over the 4096-byte limit"), "{e}");
        let url = dripping_server(
            "HTTP/1.0 200 OK\r\n\r\n",
            vec![b'#'; 200_000],
            200_000,
            Duration::ZERO,
        );
        let e = get(&url, Duration::from_secs(5), 4096, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("over the 4096-byte limit"), "{e}");
    }

    #[test]
    fn probe_status_is_the_answer_code_and_redirects_are_not_followed() {
        let (addr, server) = canned_http_server(&[
            "HTTP/1.0 204 No Content\r\n\r\n",
            "HTTP/1.0 302 Found\r\nLocation: http://192.0.2.1/\r\n\r\n",
            "HTTP/1.0 500 Oops\r\n\r\n",
        ]);
        let t = Duration::from_secs(2);
        assert_eq!(status_of(addr, "/healthz", t).unwrap(), 204);
        assert_eq!(status_of(addr, "/healthz", t).unwrap(), 302);
        assert_eq!(status_of(addr, "healthz", t).unwrap(), 500);
        server.join().unwrap();
        assert!(status_of(addr, "/", t).is_err());
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `openssl s_server -WWW` serving `dir` on 127.0.0.1 with a certificate for 127.0.0.1
    /// signed by a CA made here; killed on drop.
    struct TlsServer(Child);

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn tls_server(dir: &Path) -> (TlsServer, u16) {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=weft test CA"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(dir, &ca);
        let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
        csr.extend(ec);
        csr.extend(["-keyout", "srv.key", "-out", "srv.csr"]);
        openssl(dir, &csr);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "srv.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "san.ext",
                "-out",
                "srv.pem",
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .args([
                "s_server", "-quiet", "-WWW", "-cert", "srv.pem", "-key", "srv.key",
            ])
            .arg("-accept")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_server");
        let server = TlsServer(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s_server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (server, port)
    }

    #[test]
    fn https_is_checked_against_the_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, port) = tls_server(dir.path());
        std::fs::write(dir.path().join("pod.yaml"), "kind: Pod\n").unwrap();
        let url = format!("https://127.0.0.1:{port}/pod.yaml");
        let t = Duration::from_secs(5);
        let ca = dir.path().join("ca.pem");
        assert_eq!(get(&url, t, 4096, Some(&ca)).unwrap(), b"kind: Pod\n");
        // Without the test CA the server is unknown: refused, whatever it serves.
        let e = get(&url, t, 4096, None).unwrap_err();
        assert!(matches!(e, HttpError::Transport { .. }), "{e}");
        // A CA file that is no certificate is named in the error.
        let e = get(&url, t, 4096, Some(&dir.path().join("san.ext"))).unwrap_err();
        assert!(e.to_string().contains("san.ext"), "{e}");
    }

    #[test]
    fn only_http_and_https_urls_are_fetched() {
        let t = Duration::from_secs(1);
        for url in [
            "ftp://x/y",
            "file:///etc/passwd",
            "http:///y",
            "http://u:p@x/y",
        ] {
            let e = get(url, t, 10, None).unwrap_err();
            assert!(matches!(e, HttpError::BadUrl { .. }), "{url}: {e}");
        }
    }
}
