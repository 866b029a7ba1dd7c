//! The testnet's mail sink: a small SMTP server that writes every message
//! it accepts to a file of its own in `DIR/sink/`, so a newcomer can see
//! with `ls` and `cat` what the exits delivered (after their sanitizing
//! and padding) and a test can count it.
//!
//! It accepts any envelope (the exits decide what leaves the mixnet) and
//! answers `250` only after the file is written, synced and renamed into
//! place, as a real mail server would only acknowledge stored mail. Files
//! are numbered in the order they arrive (`000001.eml`, …); the envelope
//! is not written, since what arrives is the exit's delivery of one
//! message to one recipient domain.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Sessions at once: the exits of a testnet deliver a few at a time.
const MAX_SESSIONS: usize = 64;
/// Largest message the sink keeps: four times the testnet's
/// `max_message_size` (1 MiB; the exit pads and adds headers), so that all
/// sessions at once hold at most 256 MiB.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Longest line read, DATA included (RFC 5321 allows 1,000; a sink for
/// tests is lenient but bounded).
const MAX_LINE: usize = 64 * 1024;
/// A session quiet for this long is closed.
const IDLE: Duration = Duration::from_secs(300);

/// What the sink has written so far, shared with the one who prints.
#[derive(Debug)]
pub struct Sink {
    dir: PathBuf,
    next: AtomicU64,
}

impl Sink {
    /// A sink writing into `dir` (created), numbering after the files
    /// already there so a restarted testnet never overwrites one.
    pub fn open(dir: &Path) -> std::io::Result<Sink> {
        std::fs::create_dir_all(dir)?;
        let mut last = 0;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_suffix(".eml")
                .and_then(|n| n.parse::<u64>().ok())
            {
                last = last.max(n);
            }
        }
        Ok(Sink {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(last + 1),
        })
    }

    /// Writes one message: a temporary file, fsync, rename, fsync of the
    /// folder. Returns the file's path.
    fn store(&self, message: &[u8]) -> std::io::Result<PathBuf> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.join(format!("{n:06}.eml"));
        let tmp = self.dir.join(format!(".{n:06}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(message)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }
}

/// Serves SMTP on `listener` until `stop`; `delivered` hears the path of
/// every file written.
pub async fn serve(
    listener: TcpListener,
    sink: Arc<Sink>,
    delivered: tokio::sync::mpsc::Sender<PathBuf>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_SESSIONS));
    loop {
        // A slot first: past the cap, connections wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (sink, delivered, stop) = (sink.clone(), delivered.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = session(stream, &sink, &delivered) => {}
            }
            drop(slot);
        });
    }
}

/// Reads one line (CRLF or LF) of at most [`MAX_LINE`] bytes, within
/// [`IDLE`]; `None` at the end of the stream.
async fn line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        IDLE,
        (&mut *r).take(MAX_LINE as u64).read_until(b'\n', &mut buf),
    )
    .await
    .map_err(|_| std::io::ErrorKind::TimedOut)??;
    if read == 0 {
        return Ok(None);
    }
    if !buf.ends_with(b"\n") {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    Ok(Some(buf))
}

async fn session(
    stream: TcpStream,
    sink: &Arc<Sink>,
    delivered: &tokio::sync::mpsc::Sender<PathBuf>,
) -> std::io::Result<()> {
    let (read, mut w) = stream.into_split();
    let mut r = BufReader::new(read);
    w.write_all(b"220 pluto2-testnet-sink ESMTP\r\n").await?;
    let (mut from, mut rcpts) = (false, 0usize);
    while let Some(l) = line(&mut r).await? {
        let text = String::from_utf8_lossy(&l);
        let verb = text.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if verb.starts_with("EHLO") {
            b"250-pluto2-testnet-sink\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SIZE 4194304\r\n"
        } else if verb.starts_with("HELO") {
            b"250 pluto2-testnet-sink\r\n"
        } else if verb.starts_with("MAIL FROM:") {
            (from, rcpts) = (true, 0);
            b"250 2.1.0 Ok\r\n"
        } else if verb.starts_with("RCPT TO:") {
            if from {
                rcpts += 1;
                b"250 2.1.5 Ok\r\n"
            } else {
                b"503 5.5.1 MAIL first\r\n"
            }
        } else if verb == "DATA" {
            if rcpts == 0 {
                b"503 5.5.1 RCPT first\r\n"
            } else {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let message = data(&mut r).await?;
                (from, rcpts) = (false, 0);
                match message {
                    None => b"552 5.3.4 Message too big for the sink\r\n",
                    Some(m) => {
                        let keeper = sink.clone();
                        let stored = tokio::task::spawn_blocking(move || keeper.store(&m))
                            .await
                            .map_err(std::io::Error::other)
                            .and_then(|r| r);
                        match stored {
                            Ok(path) => {
                                // Only for the printed line: a full channel skips a
                                // line, never a message (the file is written).
                                let _ = delivered.try_send(path);
                                b"250 2.0.0 Ok: stored\r\n"
                            }
                            Err(_) => b"451 4.3.0 The sink cannot write its file\r\n",
                        }
                    }
                }
            }
        } else if verb == "RSET" {
            (from, rcpts) = (false, 0);
            b"250 2.0.0 Ok\r\n"
        } else if verb == "NOOP" {
            b"250 2.0.0 Ok\r\n"
        } else if verb == "QUIT" {
            w.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            b"502 5.5.2 Not implemented here\r\n"
        };
        w.write_all(reply).await?;
    }
    Ok(())
}

/// The message after `354`, dot-unstuffed, with CRLF line ends; `None`
/// when it passed [`MAX_MESSAGE`] (the rest is read and thrown away so the
/// session can go on).
async fn data<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut message = Vec::new();
    let mut too_big = false;
    loop {
        let Some(l) = line(r).await? else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        let content = l
            .strip_suffix(b"\r\n")
            .or_else(|| l.strip_suffix(b"\n"))
            .unwrap_or(&l);
        if content == b"." {
            return Ok((!too_big).then_some(message));
        }
        let content = content.strip_prefix(b".").unwrap_or(content);
        if message.len() + content.len() + 2 > MAX_MESSAGE {
            too_big = true;
            message.clear();
        }
        if !too_big {
            message.extend_from_slice(content);
            message.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    /// One SMTP transaction by hand; returns every reply line.
    async fn transaction(addr: std::net::SocketAddr, body: &str) -> Vec<String> {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r).lines();
        w.write_all(
            format!(
                "EHLO t\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d.onion>\r\nDATA\r\n{body}.\r\nQUIT\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut replies = Vec::new();
        while let Some(line) = r.next_line().await.unwrap() {
            replies.push(line);
        }
        replies
    }

    /// A message is in its file, dot-unstuffed, before the `250`; a sink
    /// opened again numbers after the files already there.
    #[tokio::test]
    async fn it_stores_each_message_in_a_file_of_its_own_before_250() {
        let dir = tempfile::tempdir().unwrap();
        for round in 1..=2u64 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let sink = Arc::new(Sink::open(dir.path()).unwrap());
            let (tx, mut rx) = tokio::sync::mpsc::channel(4);
            let stop = CancellationToken::new();
            tokio::spawn(serve(listener, sink, tx, stop.clone()));
            let replies = transaction(addr, "Subject: x\r\n\r\n..dot\r\nend\r\n").await;
            assert!(
                replies
                    .iter()
                    .any(|l| l.starts_with("250 2.0.0 Ok: stored")),
                "{replies:?}"
            );
            let path = rx.recv().await.unwrap();
            assert_eq!(path, dir.path().join(format!("{round:06}.eml")));
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                "Subject: x\r\n\r\n.dot\r\nend\r\n"
            );
            stop.cancel();
        }
    }

    /// The reply waits for the file: a sink that cannot write it answers
    /// `451` (the exit keeps the message and retries), never `250`. Its
    /// folder is replaced by a plain file, which even root cannot write in.
    #[tokio::test]
    async fn a_message_it_cannot_store_gets_451_not_250() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sink");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = Arc::new(Sink::open(&dir).unwrap());
        std::fs::remove_dir(&dir).unwrap();
        std::fs::write(&dir, b"not a folder").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(serve(listener, sink, tx, CancellationToken::new()));
        let replies = transaction(addr, "Subject: x\r\n\r\nbody\r\n").await;
        assert!(
            replies.iter().any(|l| l.starts_with("451 4.3.0")),
            "{replies:?}"
        );
        assert!(
            !replies
                .iter()
                .any(|l| l.starts_with("250 2.0.0 Ok: stored"))
        );
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn it_wants_mail_and_rcpt_before_data() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Sink::open(dir.path()).unwrap());
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(serve(listener, sink, tx, CancellationToken::new()));
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r).lines();
        w.write_all(b"HELO t\r\nDATA\r\nRCPT TO:<x@y>\r\nQUIT\r\n")
            .await
            .unwrap();
        let mut replies = Vec::new();
        while let Some(line) = r.next_line().await.unwrap() {
            replies.push(line);
        }
        assert_eq!(replies[2], "503 5.5.1 RCPT first", "{replies:?}");
        assert_eq!(replies[3], "503 5.5.1 MAIL first", "{replies:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
