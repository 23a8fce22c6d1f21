//! TCP in the drivers on real loopback sockets, both backends, each test bounded in time.
//!
//! The worker runs `Echo`: a listener opened at run time whose connections get every byte back,
//! with back-pressure (a connection whose output queue is full is not read until it drains),
//! and outgoing connections on command.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use uturn::driver::{
    probe_uring, run_worker, Backend, Control, DriverConfig, Handler, Io, ListenOptions, SockId,
    StreamEvent, StreamId,
};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

enum Cmd {
    /// Connect to this address and send these bytes.
    Connect(SocketAddr, Vec<u8>),
}

#[derive(Debug)]
enum Note {
    Listening(SocketAddr),
    Connected(Option<String>),
    Closed,
}

struct Echo {
    listener: Option<StreamId>,
    /// Bytes read but not yet taken by the output queue, per connection.
    backlog: HashMap<StreamId, Vec<u8>>,
    /// Greetings to send once a connection is up.
    greet: HashMap<StreamId, Vec<u8>>,
    cmds: Receiver<Cmd>,
    notes: Sender<Note>,
}

impl Echo {
    fn push<I: Io>(&mut self, io: &mut I, conn: StreamId) {
        let Some(b) = self.backlog.get_mut(&conn) else {
            return;
        };
        let n = io.stream_send(conn, b);
        b.drain(..n);
        // Read more only once everything read so far is queued.
        io.stream_set_reading(conn, b.is_empty());
    }
}

impl Handler for Echo {
    fn on_recv<I: Io>(&mut self, _: Instant, _: SockId, _: SocketAddr, _: I::Packet, _: &mut I) {}

    fn on_tick<I: Io>(&mut self, _: Instant, io: &mut I) {
        if self.listener.is_none() {
            let id = io
                .tcp_listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default())
                .expect("listen");
            let (addr, _) = io.stream_addrs(id).expect("addrs");
            self.listener = Some(id);
            self.notes.send(Note::Listening(addr)).unwrap();
        }
        while let Ok(Cmd::Connect(to, bytes)) = self.cmds.try_recv() {
            let id = io.tcp_connect(None, to).expect("connect");
            self.greet.insert(id, bytes);
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        None
    }

    fn on_stream<I: Io>(&mut self, _: Instant, event: StreamEvent<'_>, io: &mut I) {
        match event {
            StreamEvent::Accepted { listener, conn, .. } => {
                assert_eq!(Some(listener), self.listener);
                self.backlog.insert(conn, Vec::new());
                io.stream_set_reading(conn, true);
            }
            StreamEvent::Connected { conn, error } => {
                let ok = error.is_none();
                self.notes
                    .send(Note::Connected(error.map(|e| e.to_string())))
                    .unwrap();
                match self.greet.remove(&conn) {
                    Some(g) if ok => {
                        assert_eq!(io.stream_send(conn, &g), g.len());
                        self.backlog.insert(conn, Vec::new());
                        io.stream_set_reading(conn, true);
                    }
                    _ => io.stream_close(conn),
                }
            }
            StreamEvent::Data { conn, bytes } => {
                if let Some(b) = self.backlog.get_mut(&conn) {
                    b.extend_from_slice(bytes);
                }
                self.push(io, conn);
            }
            StreamEvent::Writable { conn } => self.push(io, conn),
            StreamEvent::Closed { conn, .. } => {
                self.backlog.remove(&conn);
                io.stream_close(conn);
                let _ = self.notes.send(Note::Closed);
            }
        }
    }
}

struct Running {
    control: Sender<Control>,
    cmds: Sender<Cmd>,
    notes: Receiver<Note>,
    listen: SocketAddr,
    thread: Option<thread::JoinHandle<()>>,
}

impl Running {
    fn start(backend: Backend) -> Running {
        let (control, control_rx) = bounded(4);
        let (cmds, cmds_rx) = bounded(16);
        let (notes_tx, notes) = bounded(1024);
        let thread = thread::spawn(move || {
            let mut h = Echo {
                listener: None,
                backlog: HashMap::new(),
                greet: HashMap::new(),
                cmds: cmds_rx,
                notes: notes_tx,
            };
            run_worker(
                backend,
                &mut h,
                Vec::new(),
                &control_rx,
                &DriverConfig::default(),
            )
            .expect("worker");
        });
        let listen = match notes.recv_timeout(IO_TIMEOUT).expect("listening") {
            Note::Listening(a) => a,
            n => panic!("unexpected {n:?}"),
        };
        Running {
            control,
            cmds,
            notes,
            listen,
            thread: Some(thread),
        }
    }

    fn note(&self) -> Note {
        self.notes
            .recv_timeout(IO_TIMEOUT)
            .expect("a note from the worker")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let until = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < until {
                thread::sleep(Duration::from_millis(5));
            }
            assert!(t.is_finished(), "the worker stops within 2 s");
            t.join().expect("worker thread");
        }
    }
}

fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Portable];
    match probe_uring() {
        Ok(()) => v.push(Backend::Uring),
        Err(e) => eprintln!("skipped uring: {e}"),
    }
    v
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

#[test]
fn echoes_many_small_writes_and_a_large_one_byte_for_byte() {
    for b in backends() {
        let r = Running::start(b);
        let mut s = connect(r.listen);
        // Small writes, each echoed before the next.
        for n in [1usize, 2, 3, 100, 2047, 2048, 2049, 5000] {
            let msg: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            s.write_all(&msg).unwrap();
            let mut got = vec![0; n];
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, msg, "{b:?}: {n} bytes");
        }
        // 8 MiB written by one thread while another reads: far more than a queue holds, so the
        // worker must stop reading and resume as the queue drains (back-pressure), in order.
        let total = 8 << 20;
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut w = s.try_clone().unwrap();
        let sent = data.clone();
        let writer = thread::spawn(move || w.write_all(&sent).unwrap());
        let mut got = vec![0; total];
        s.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == data, "{b:?}: 8 MiB echoed byte for byte");
        // EOF from the client: the worker sees Closed and closes its side.
        s.shutdown(Shutdown::Write).unwrap();
        assert!(matches!(r.note(), Note::Closed));
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
}

#[test]
fn serves_hundreds_of_connections_at_once() {
    for b in backends() {
        let r = Running::start(b);
        let mut conns: Vec<TcpStream> = (0..300).map(|_| connect(r.listen)).collect();
        for (i, c) in conns.iter_mut().enumerate() {
            c.write_all(format!("hello {i:04}").as_bytes()).unwrap();
        }
        for (i, c) in conns.iter_mut().enumerate() {
            let mut got = [0u8; 10];
            c.read_exact(&mut got).unwrap();
            assert_eq!(&got, format!("hello {i:04}").as_bytes(), "{b:?}");
        }
    }
}

#[test]
fn connects_out_and_reports_failures() {
    for b in backends() {
        let r = Running::start(b);
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        r.cmds
            .send(Cmd::Connect(
                target.local_addr().unwrap(),
                b"greetings".to_vec(),
            ))
            .unwrap();
        let (mut s, _) = target.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        assert!(matches!(r.note(), Note::Connected(None)));
        let mut got = [0u8; 9];
        s.read_exact(&mut got).unwrap();
        assert_eq!(
            &got, b"greetings",
            "{b:?}: bytes queued at connect time go out"
        );
        s.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping", "{b:?}: the outgoing connection is read too");

        // A port nobody listens on.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        r.cmds.send(Cmd::Connect(closed, Vec::new())).unwrap();
        match r.note() {
            Note::Connected(Some(e)) => assert!(e.contains("refused"), "{b:?}: {e}"),
            n => panic!("{b:?}: expected a refused connect, got {n:?}"),
        }
    }
}
