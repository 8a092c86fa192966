//! The one plain-HTTP GET client of the `falcon` binary: `falcon healthcheck` and
//! `falcon doctor` both ask a worker's endpoints with it. HTTP/1.1 over one fresh
//! connection, no TLS, no redirects: it talks to workers and load balancers on the
//! operator's own network, and needs nothing a container image lacks (no curl).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// GET `url` (`http://[user@]host[:port][/path]`, port 80 by default): its status and body.
/// The caller bounds the time (`tokio::time::timeout`).
pub async fn get(url: &str) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let addr = if authority.rsplit_once(':').is_some_and(|(_, port)| !port.ends_with(']')) {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let stream = TcpStream::connect(&addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, driver) =
        http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(driver);
    let req = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, concat!("falcon/", env!("CARGO_PKG_VERSION")))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot server that records the request head and answers `answer`.
    async fn serve_once(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its request head ended");
                head.extend_from_slice(&buf[..n]);
            }
            conn.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (format!("http://{addr}"), server)
    }

    #[tokio::test]
    async fn gets_the_status_and_body_with_host_and_path() {
        let (base, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nnope!").await;
        let (status, body) = get(&format!("{base}/readyz")).await.unwrap();
        assert_eq!((status, body.as_str()), (503, "nope!"));
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /readyz HTTP/1.1\r\n"), "{head}");
        let host = base.trim_start_matches("http://");
        assert!(head.to_ascii_lowercase().contains(&format!("host: {host}\r\n")), "{head}");
    }

    #[tokio::test]
    async fn a_url_without_a_path_asks_for_the_root_and_https_is_refused() {
        let (base, server) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(get(&base).await.unwrap().0, 200);
        assert!(server.await.unwrap().starts_with("GET / HTTP/1.1\r\n"));
        assert!(get("https://example.invalid/").await.unwrap_err().contains("only http://"));
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_address() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = get(&format!("http://127.0.0.1:{port}/healthz")).await.unwrap_err();
        assert!(err.starts_with(&format!("connect 127.0.0.1:{port}:")), "{err}");
    }
}
