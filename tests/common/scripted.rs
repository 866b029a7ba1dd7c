//! A scripted one-connection SMTP server for tests of the outbound client:
//! it follows a fixed list of steps (say this, expect that), fails the test
//! when the client strays from them, and hands back what it read. The
//! steps are written with [`Script`], a builder whose methods name the
//! parts of an SMTP exchange, so a test spells only where its server
//! differs from an ordinary one.
//!
//! ```ignore
//! let server = Script::greeting()
//!     .ehlo(EHLO_PIPELINING)
//!     .pipelined(1, "250 ok\r\n250 ok\r\n354 go\r\n")
//!     .message("250 queued\r\n")
//!     .quit()
//!     .serve()
//!     .await;
//! ```

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::PATIENCE;

/// The greeting of [`Script::greeting`].
pub const GREETING: &str = "220 scripted.test\r\n";

/// What an ordinary server answers to a command it accepts.
pub const OK: &str = "250 ok\r\n";

enum Step {
    /// Write these bytes as they are (the script supplies the CRLFs).
    Say(Vec<u8>),
    /// Read one line and require this prefix (case-insensitive).
    Expect(&'static str),
    /// Like `Expect`, and require that the client sent nothing after the
    /// line: a lock-step client is waiting for our reply at this point, so
    /// this can never fail for a correct client.
    ExpectAlone(&'static str),
    /// Read a DATA body up to and including the terminating dot line.
    Body,
}

/// The steps a scripted server follows, in order.
#[derive(Default)]
#[must_use = "a script does nothing until it is served"]
pub struct Script {
    steps: Vec<Step>,
}

impl Script {
    /// A server that says nothing of its own accord; the test writes its
    /// first words (a refusal, garbage, an endless line).
    pub fn new() -> Script {
        Script::default()
    }

    /// A server that greets with [`GREETING`].
    pub fn greeting() -> Script {
        Script::new().say(GREETING)
    }

    /// Writes `text` as it is (with its CRLFs).
    pub fn say(self, text: &str) -> Script {
        self.say_bytes(text.as_bytes().to_vec())
    }

    /// Writes `bytes` as they are.
    pub fn say_bytes(mut self, bytes: Vec<u8>) -> Script {
        self.steps.push(Step::Say(bytes));
        self
    }

    /// Reads a line that must start with `prefix` (case-insensitive).
    pub fn expect(mut self, prefix: &'static str) -> Script {
        self.steps.push(Step::Expect(prefix));
        self
    }

    /// Reads a line starting with `prefix` that the client sent alone
    /// (nothing after it yet) and answers `reply`: one lock-step turn.
    pub fn ask(mut self, prefix: &'static str, reply: &str) -> Script {
        self.steps.push(Step::ExpectAlone(prefix));
        self.say(reply)
    }

    /// Reads EHLO and answers `reply` (an extension list or a refusal).
    pub fn ehlo(self, reply: &str) -> Script {
        self.expect("EHLO ").say(reply)
    }

    /// Reads STARTTLS and answers `reply`.
    pub fn starttls(self, reply: &str) -> Script {
        self.expect("STARTTLS").say(reply)
    }

    /// A lock-step envelope: MAIL, `rcpts` RCPTs and DATA, each read alone
    /// and accepted (DATA with 354).
    pub fn lockstep_envelope(self, rcpts: usize) -> Script {
        let mut script = self.ask("MAIL FROM:", OK);
        for _ in 0..rcpts {
            script = script.ask("RCPT TO:", OK);
        }
        script.ask("DATA", "354 go\r\n")
    }

    /// A pipelined envelope: MAIL, `rcpts` RCPTs and DATA all read before
    /// any reply, then `replies` (one per command) in one write.
    pub fn pipelined(self, rcpts: usize, replies: &str) -> Script {
        let mut script = self.expect("MAIL FROM:");
        for _ in 0..rcpts {
            script = script.expect("RCPT TO:");
        }
        script.expect("DATA").say(replies)
    }

    /// Reads the message up to its dot line and answers `reply`.
    pub fn message(mut self, reply: &str) -> Script {
        self.steps.push(Step::Body);
        self.say(reply)
    }

    /// Reads QUIT and says goodbye.
    pub fn quit(self) -> Script {
        self.expect("QUIT").say("221 bye\r\n")
    }

    /// Listens on 127.0.0.1 and follows the script on the first
    /// connection.
    pub async fn serve(self) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut io = BufReader::new(stream);
            let mut seen = Transcript::default();
            for step in self.steps {
                match step {
                    Step::Say(bytes) => io.get_mut().write_all(&bytes).await.unwrap(),
                    Step::Expect(prefix) | Step::ExpectAlone(prefix) => {
                        let alone = matches!(step, Step::ExpectAlone(_));
                        let mut line = String::new();
                        let n = io.read_line(&mut line).await.unwrap();
                        assert!(n > 0, "client closed; expected {prefix:?}; got {seen:?}");
                        let line = line.trim_end_matches(['\r', '\n']).to_string();
                        assert!(
                            line.to_ascii_uppercase()
                                .starts_with(&prefix.to_ascii_uppercase()),
                            "expected {prefix:?}, got {line:?}"
                        );
                        if alone {
                            assert!(
                                io.buffer().is_empty(),
                                "client sent more before our reply to {line:?}"
                            );
                        }
                        seen.lines.push(line);
                    }
                    Step::Body => {
                        let mut body = Vec::new();
                        loop {
                            let start = body.len();
                            let n = io.read_until(b'\n', &mut body).await.unwrap();
                            assert!(n > 0, "client closed in DATA");
                            if &body[start..] == b".\r\n" {
                                break;
                            }
                        }
                        seen.bodies.push(body);
                    }
                }
            }
            // Read until the client hangs up rather than closing first:
            // closing with unread input would reset the connection and
            // could destroy a reply the client has not read yet.
            let mut sink = Vec::new();
            let _ = io.read_to_end(&mut sink).await;
            seen
        });
        Scripted { addr, task }
    }
}

/// A scripted server at work.
pub struct Scripted {
    pub addr: std::net::SocketAddr,
    task: JoinHandle<Transcript>,
}

/// Command lines (without CRLF) and DATA bodies (raw, still dot-stuffed,
/// terminator included) in the order they arrived.
#[derive(Debug, Default)]
pub struct Transcript {
    pub lines: Vec<String>,
    pub bodies: Vec<Vec<u8>>,
}

impl Scripted {
    /// The transcript, once the client has hung up. A failed expectation
    /// in the server task fails the test here.
    pub async fn transcript(self) -> Transcript {
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("scripted server still running")
            .expect("scripted server")
    }
}
