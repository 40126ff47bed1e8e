//! The HTTP ceiling: a bare hyper 1 server that reads the whole body and answers 200
//! `{"status":"accepted"}`: what cbgate is compared with under the same load.
//! Usage: bare_hyper [ADDR]   (default 127.0.0.1:18080)

use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:18080".into());
    let l = tokio::net::TcpListener::bind(&addr).await.unwrap();
    loop {
        let (s, _) = l.accept().await.unwrap();
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let _b = req.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(bytes::Bytes::from_static(
                                br#"{"status":"accepted"}"#,
                            )))
                            .unwrap(),
                    )
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}
