//! What the server's integration tests share: a tiny random model with a character tokenizer, a server on
//! 127.0.0.1:0, and a minimal HTTP/1.1 client over a raw socket.
#![allow(dead_code)] // each test file uses its own subset

use lushan_model::{Gpt, ModelConfig};
use lushan_server::{Metrics, Server, ServerOptions};
use lushan_tokenizer::{CharTokenizer, Tokenizer};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TEXT: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?'\n";
pub const SEED: u64 = 42;

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub vocab: usize,
}

pub fn tokenizer() -> Tokenizer {
    Tokenizer::from(CharTokenizer::from_text(TEXT).unwrap())
}

/// Two layers, two heads, random weights (seed [`SEED`]).
pub fn model(block_size: usize, n_embd: usize) -> Gpt {
    Gpt::new(ModelConfig::new(tokenizer().vocab_size(), block_size, 2, 2, n_embd), SEED).unwrap()
}

pub async fn start(block_size: usize, n_embd: usize, options: ServerOptions) -> TestServer {
    serve(model(block_size, n_embd), tokenizer(), options).await
}

/// Serves `model` with `tokenizer` on 127.0.0.1:0.
pub async fn serve(model: Gpt, tokenizer: Tokenizer, options: ServerOptions) -> TestServer {
    let vocab = tokenizer.vocab_size();
    let server = Server::new(model, tokenizer, options).unwrap();
    let metrics = server.metrics();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    TestServer { addr, metrics, vocab }
}

pub async fn small() -> TestServer {
    start(128, 32, ServerOptions::new("tiny")).await
}

pub fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Status, lower-cased head and de-chunked body.
pub async fn send_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&raw_request(method, path, headers, body)).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
    (status, head, body)
}

/// Status and de-chunked body.
pub async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let (status, _, body) = send_full(addr, method, path, headers, body).await;
    (status, body)
}

pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// POSTs JSON; the answer parsed as JSON (or kept as a string when it is not).
pub async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (status, text) =
        send(addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}
