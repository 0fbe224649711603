//! The dubbo codec against real dubbo peers: npm `sofa-rpc-node`'s client and server speaking npm
//! `dubbo-remoting` (dubbo2 framing, hessian2 via `hessian.js`), installed by `./scripts/test`.
//!
//! Between them sits a small recorder built on [`DubboCodec`] alone, standing in for the mesh: it
//! cuts both byte streams into frames, rewrites every forwarded request id into its own id space
//! and back on the response (as the multiplexer does), and answers two methods itself with the
//! codec's `error_response`. Every captured frame is checked: routing fields as the client sent
//! them, ids mapped both ways, the real server's heartbeat answer byte-equal to ours, and the real
//! client reporting our error messages rather than a decode failure.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mesh_xprotocol::dubbo::hessian2::Reader;
use mesh_xprotocol::{DubboCodec, Frame, FrameKind, XCodec, XError};

const MAX_FRAME: usize = 8 << 20;
/// Forwarded requests get ids from here on, far from the client's own small ids.
const ID_BASE: u64 = 1 << 40;

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/dubbo")
        .join(name)
}

/// Which way a captured frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    FromClient,
    FromServer,
}

#[derive(Default)]
struct Recorded {
    frames: Vec<(Dir, Frame)>,
    /// Our upstream id → the client's id.
    ids: HashMap<u64, u64>,
    next_id: u64,
    /// Bytes we answered the client with ourselves.
    answered: Vec<bytes::Bytes>,
}

/// Cuts `stream` into frames and hands each to `on_frame` until the peer closes.
fn frames(mut stream: TcpStream, mut on_frame: impl FnMut(Frame)) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match DubboCodec.decode(&mut buf, MAX_FRAME) {
            Ok(Some(frame)) => on_frame(frame),
            Ok(None) => match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
            Err(e) => panic!("a real peer's frame did not decode: {e}"),
        }
    }
}

/// Serves one client connection: frames from the client are recorded and forwarded upstream
/// with new ids (or answered here), frames from the server are recorded and sent back with the
/// client's ids.
fn relay(client: TcpStream, server: std::net::SocketAddr, rec: Arc<Mutex<Recorded>>) {
    let upstream = TcpStream::connect(server).expect("connect to the real server");
    let (mut to_server, mut to_client) = (
        upstream.try_clone().expect("clone a socket"),
        client.try_clone().expect("clone a socket"),
    );
    let rec_back = rec.clone();
    let back = std::thread::spawn(move || {
        frames(upstream, |mut frame| {
            let mut rec = rec_back.lock().expect("recorder lock");
            rec.frames.push((Dir::FromServer, frame.clone()));
            let original = rec.ids.get(&frame.request_id).copied();
            drop(rec);
            let original = original.expect("a response to an id we sent");
            DubboCodec.set_request_id(&mut frame, original);
            let _ = to_client.write_all(&frame.raw);
        });
    });
    let mut to_client = client.try_clone().expect("clone a socket");
    frames(client, |mut frame| {
        let mut rec = rec.lock().expect("recorder lock");
        rec.frames.push((Dir::FromClient, frame.clone()));
        let answer = match frame.header.method.as_str() {
            "noProvider" => Some(XError::NoProvider),
            "timeout" => Some(XError::Timeout),
            _ => None,
        };
        if let (Some(error), FrameKind::Request { .. }) = (answer, frame.kind) {
            let bytes = DubboCodec.error_response(&frame, error);
            rec.answered.push(bytes.clone());
            let _ = to_client.write_all(&bytes);
            return;
        }
        let id = ID_BASE + rec.next_id;
        rec.next_id += 1;
        rec.ids.insert(id, frame.request_id);
        drop(rec);
        DubboCodec.set_request_id(&mut frame, id);
        let _ = to_server.write_all(&frame.raw);
    });
    let _ = to_server.shutdown(std::net::Shutdown::Both);
    let _ = back.join();
}

fn attachment<'a>(frame: &'a Frame, key: &str) -> Option<&'a str> {
    frame
        .header
        .attachments
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The real provider, the recorder in front of it, and one run of `client` (given the recorder's
/// address as its last argument): the client's stdout and everything recorded.
fn run_through_recorder(
    node: &mesh_testkit::NodePackages,
    mut client: std::process::Command,
) -> (String, Recorded) {
    let port = mesh_testkit::free_port();
    let mut server = node.command(script("server.js"));
    server
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut server = KillOnDrop(server.spawn().expect("start the dubbo server"));
    let mut ready = String::new();
    BufReader::new(server.0.stdout.take().expect("server stdout"))
        .read_line(&mut ready)
        .expect("read the server's READY line");
    assert_eq!(
        ready.trim(),
        format!("READY {port}"),
        "server did not start"
    );
    let server_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();

    // The recorder, relaying every connection the client opens.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the recorder");
    let recorder = listener.local_addr().expect("recorder address");
    let rec = Arc::new(Mutex::new(Recorded::default()));
    let rec_accept = rec.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let rec = rec_accept.clone();
            std::thread::spawn(move || relay(client, server_addr, rec));
        }
    });

    // The real consumer, bounded in time.
    client.arg(recorder.to_string()).stdout(Stdio::piped());
    let mut client = KillOnDrop(client.spawn().expect("start the dubbo client"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.0.try_wait().expect("poll the client").is_none() {
        assert!(
            Instant::now() < deadline,
            "the dubbo client did not finish in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    client
        .0
        .stdout
        .take()
        .expect("client stdout")
        .read_to_string(&mut out)
        .expect("read the client's output");
    let rec = std::mem::take(&mut *rec.lock().expect("recorder lock"));
    (out, rec)
}

fn from(rec: &Recorded, dir: Dir) -> Vec<&Frame> {
    rec.frames
        .iter()
        .filter(|(d, _)| *d == dir)
        .map(|(_, f)| f)
        .collect()
}

fn two_way_requests(rec: &Recorded) -> Vec<&Frame> {
    from(rec, Dir::FromClient)
        .into_iter()
        .filter(|f| matches!(f.kind, FrameKind::Request { oneway: false }))
        .collect()
}

/// Every forwarded frame got exactly one answer from the server, under our id (mapped back to the
/// client's by the relay), and answers carry no routing fields.
fn assert_ids_mapped_both_ways(rec: &Recorded) {
    let from_server = from(rec, Dir::FromServer);
    let mut answered: Vec<u64> = from_server.iter().map(|f| f.request_id).collect();
    answered.sort_unstable();
    let mut sent: Vec<u64> = rec.ids.keys().copied().collect();
    sent.sort_unstable();
    assert_eq!(answered, sent);
    assert!(sent.iter().all(|id| *id >= ID_BASE));
    for f in &from_server {
        assert_eq!(f.header, Default::default());
        assert!(matches!(
            f.kind,
            FrameKind::Response | FrameKind::HeartbeatResponse
        ));
    }
}

#[test]
fn real_dubbo_client_and_server_through_the_codec() {
    let Some(node) = mesh_testkit::require_node_packages(&["sofa-rpc-node", "dubbo-remoting"])
    else {
        return;
    };
    let (out, rec) = run_through_recorder(&node, node.command(script("client.js")));
    let lines: Vec<&str> = out.lines().collect();

    // The calls the server answered came back to the client with its own ids.
    assert_eq!(lines.first(), Some(&"OK sayHello hello world"), "{out}");
    assert_eq!(
        lines.get(1),
        Some(&"OK shapes string,string,number,number,number,boolean,null,object,object,list,list,object,object,object,object"),
        "{out}"
    );
    // The real client reports the errors we answered with, not a decode failure.
    let (_, no_provider) = DubboCodec::error_status(XError::NoProvider);
    let (_, timeout) = DubboCodec::error_status(XError::Timeout);
    assert_eq!(
        lines.get(2),
        Some(&format!("ERR noProvider {no_provider}").as_str()),
        "{out}"
    );
    assert_eq!(
        lines.get(3),
        Some(&format!("ERR timeout {timeout}").as_str()),
        "{out}"
    );
    assert!(
        lines.get(4).is_some_and(|l| l.starts_with("ERR missing ")),
        "{out}"
    );
    assert_eq!(lines.last(), Some(&"DONE"), "{out}");

    let requests = two_way_requests(&rec);
    let methods: Vec<&str> = requests.iter().map(|f| f.header.method.as_str()).collect();
    assert_eq!(
        methods,
        ["sayHello", "shapes", "noProvider", "timeout", "missing"]
    );

    // Routing fields decode as the client sent them, also after skipping the shapes' arguments.
    for f in &requests {
        assert_eq!(f.header.service, "org.example.Greeter");
        assert_eq!(attachment(f, "path"), Some("org.example.Greeter"));
        assert_eq!(attachment(f, "version"), Some("1.0.0"));
        assert_eq!(attachment(f, "group"), Some("blue"));
        assert_eq!(
            attachment(f, "trace"),
            Some("abc-123"),
            "requestProps travel as attachments"
        );
        assert!(attachment(f, "dubbo").is_some_and(|v| !v.is_empty()));
    }
    assert!(
        requests[1].raw.len() > 140_000,
        "the shapes request carries its big arguments"
    );
    assert_ids_mapped_both_ways(&rec);

    // The real server's own error response has the shape of ours: a status and a hessian2 string.
    let from_server = from(&rec, Dir::FromServer);
    let upstream_of = |client_id: u64| {
        *rec.ids
            .iter()
            .find(|(_, c)| **c == client_id)
            .expect("forwarded")
            .0
    };
    let missing_upstream = upstream_of(requests[4].request_id);
    let server_error = from_server
        .iter()
        .find(|f| f.request_id == missing_upstream)
        .expect("the server answered `missing`");
    assert_eq!(server_error.status, Some(80), "SERVER_ERROR");
    let message = Reader::new(&server_error.raw[16..])
        .read_string()
        .unwrap()
        .unwrap();
    assert!(message.contains("missing"), "{message}");
    assert_eq!(rec.answered.len(), 2);
    for bytes in &rec.answered {
        assert_eq!(
            bytes[2], server_error.raw[2],
            "same flag byte as the real server's"
        );
    }

    // The client's heartbeat went to the server; its answer is byte-equal to our heartbeat_response.
    let heartbeat = from(&rec, Dir::FromClient)
        .into_iter()
        .find(|f| f.kind == FrameKind::HeartbeatRequest)
        .expect("the client sent a heartbeat");
    let upstream_id = upstream_of(heartbeat.request_id);
    let ack = from_server
        .iter()
        .find(|f| f.kind == FrameKind::HeartbeatResponse)
        .expect("the server answered the heartbeat");
    assert_eq!(ack.request_id, upstream_id);
    let mut forwarded = heartbeat.clone();
    DubboCodec.set_request_id(&mut forwarded, upstream_id);
    assert_eq!(&DubboCodec.heartbeat_response(&forwarded)[..], &ack.raw[..]);
}

/// A second, independent writer: PyPI's dubbo-ssl-python client (its own hessian2 encoder)
/// against the same real server through the same recorder.
#[test]
fn real_python_dubbo_client_through_the_codec() {
    let Some(node) = mesh_testkit::require_node_packages(&["sofa-rpc-node", "dubbo-remoting"])
    else {
        return;
    };
    let Some(python) = mesh_testkit::require_dubbo_python() else {
        return;
    };
    let mut client = std::process::Command::new(python);
    client.arg(script("client.py")).stderr(Stdio::null());
    let (out, rec) = run_through_recorder(&node, client);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"OK sayHello hello world"), "{out}");
    assert_eq!(
        lines.get(1),
        Some(&"OK shapes string,number,number,number,boolean,list,object,object"),
        "{out}"
    );
    let (_, no_provider) = DubboCodec::error_status(XError::NoProvider);
    assert!(
        lines
            .get(2)
            .is_some_and(|l| l.starts_with("ERR noProvider") && l.contains(no_provider)),
        "{out}"
    );
    assert_eq!(lines.last(), Some(&"DONE"), "{out}");

    let requests = two_way_requests(&rec);
    let methods: Vec<&str> = requests.iter().map(|f| f.header.method.as_str()).collect();
    assert_eq!(methods, ["sayHello", "shapes", "noProvider"]);
    for f in &requests {
        assert_eq!(f.header.service, "org.example.Greeter");
        assert_eq!(attachment(f, "dubbo"), Some("2.7.23"));
        assert_eq!(attachment(f, "version"), Some("1.0.0"));
        assert_eq!(attachment(f, "group"), Some("blue"));
        assert_eq!(
            attachment(f, "trace"),
            Some("py-7"),
            "context travels as attachments"
        );
    }
    assert_ids_mapped_both_ways(&rec);
}
