//! Loop cover traffic: fake messages that leave exactly like real ones and
//! come back to this node, where they are recognised and discarded.
//!
//! They are generated as a Poisson process (exponential gaps with mean
//! `-cover-interval`), addressed to this node's own onion name, and go
//! through the same spool, mix, padding and workers as real mail, so an
//! observer of the Tor streams sees one more message of ordinary size at an
//! unpredictable time. Each carries a marker only this node can make: an
//! HMAC-SHA-256 of a random nonce under a secret kept in the data dir. A
//! forged or replayed-from-elsewhere marker does not verify, so nobody can
//! make this node silently swallow real mail by adding a header.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::BoxFuture;
use crate::address::OnionName;
use crate::envelope::EnqueueOutcome;
use crate::envelope::{COVER_LOCAL_PART, Envelope, Message};
use crate::message::header;
use crate::node::dispatch::DeliveryHealth;
use crate::release::MixPolicy;
use crate::spool::Spool;
use crate::stats::Stats;
use crate::time::{Clock, UnixMillis};

/// Header that carries the marker.
pub const MARKER: &str = "X-Pluto2-Cover";
/// The key's file in the data dir (`pluto2 check` inspects it too).
pub const KEY_FILE: &str = "cover.key";
/// Longest marker value worth decoding: a 16-byte nonce and a 32-byte tag
/// take 97 hex characters and a dot; the rest leaves room for folding.
/// Longer values are refused before any decoding work.
const MAX_MARKER_VALUE: usize = 128;

/// The node's secret for cover markers.
#[derive(Clone)]
pub struct CoverKey([u8; 32]);

impl CoverKey {
    /// Reads the key, creating it (mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<CoverKey> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                return Ok(CoverKey(key));
            }
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is not 32 bytes; delete it to make a new one",
                        path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let key: [u8; 32] = rand::rng().random();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(&key)?;
        file.sync_all()?;
        Ok(CoverKey(key))
    }

    #[cfg(test)]
    pub fn from_bytes(key: [u8; 32]) -> CoverKey {
        CoverKey(key)
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// The marker header line for a fresh nonce.
    fn marker<R: Rng + ?Sized>(&self, rng: &mut R) -> String {
        let nonce: [u8; 16] = rng.random();
        let mut mac = self.mac();
        mac.update(&nonce);
        let tag = mac.finalize().into_bytes();
        format!("{MARKER}: {}.{}", hex(&nonce), hex(&tag))
    }

    /// True if the header block carries a marker made with this key.
    pub fn is_cover(&self, message: &[u8]) -> bool {
        header::fields(message)
            .filter(|field| field.has_name(MARKER))
            .any(|field| self.verify(field.value))
    }

    /// Checks a marker value `nonce.tag` (hex, either case, surrounding
    /// whitespace and folding allowed).
    fn verify(&self, value: &[u8]) -> bool {
        if value.len() > MAX_MARKER_VALUE {
            return false;
        }
        let value = value.trim_ascii();
        let Some(dot) = memchr::memchr(b'.', value) else {
            return false;
        };
        let (nonce, tag) = (&value[..dot], &value[dot + 1..]);
        let hex = data_encoding::HEXLOWER_PERMISSIVE;
        let (Ok(nonce), Ok(tag)) = (hex.decode(nonce), hex.decode(tag)) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(&nonce);
        // Constant-time comparison.
        mac.verify_slice(&tag).is_ok()
    }
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Body size of a cover message: log-normal around a few KiB, like typical
/// mail (median ≈ 3 KiB, long tail), bounded to [200 B, 256 KiB]. Padding
/// then rounds it up to blocks exactly as for real mail.
fn cover_size<R: Rng + ?Sized>(rng: &mut R) -> usize {
    // Box-Muller for a standard normal.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let size = (3000f64.ln() + 1.0 * z).exp();
    size.clamp(200.0, 262_144.0) as usize
}

/// A complete cover message to `own` (this node's onion name).
pub fn make_message<R: Rng + ?Sized>(key: &CoverKey, own: &OnionName, rng: &mut R) -> Message {
    let mut body = format!(
        "{}\r\nSubject: {}\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        key.marker(rng),
        hex(&rng.random::<[u8; 6]>()),
    );
    // Base64 writes 4 characters for 3 bytes; the body then has about
    // `cover_size` characters, in 76-character lines ending with CRLF.
    let mut content = vec![0u8; cover_size(rng) / 4 * 3];
    rng.fill_bytes(&mut content);
    data_encoding::BASE64_MIME.encode_append(&content, &mut body);
    let body = body.into_bytes();
    Message {
        envelope: Envelope {
            sender: String::new(),
            recipients: vec![format!("{COVER_LOCAL_PART}@{own}")],
            smtputf8: false,
            eight_bit: false,
            to_own_name: true,
        },
        body,
    }
}

/// Where generated cover goes: the spool in the daemon. A trait so the
/// generator's timing can be tested on paused time without a database
/// thread (whose I/O would let paused time jump ahead).
pub trait MailCoverSink: Send + Sync {
    fn enqueue(&self, message: Message, release_at: UnixMillis) -> BoxFuture<'_, EnqueueOutcome>;
}

impl MailCoverSink for Spool {
    fn enqueue(&self, message: Message, release_at: UnixMillis) -> BoxFuture<'_, EnqueueOutcome> {
        Box::pin(Spool::enqueue(self, message, release_at))
    }
}

/// The loop cover generator task.
pub struct CoverGenerator {
    pub key: CoverKey,
    /// This node's onion name: cover is addressed to ourselves.
    pub own: OnionName,
    pub queue: Arc<dyn MailCoverSink>,
    /// Cover gets release times like real mail, so it is mixed with it.
    pub mix: MixPolicy,
    /// Mean gap between cover messages.
    pub interval: Duration,
    pub stats: Arc<Stats>,
    /// Where "now" comes from for release times (injected for tests).
    pub clock: Clock,
    /// While deliveries fail because Tor cannot be used, no cover is made.
    pub health: Arc<DeliveryHealth>,
}

impl CoverGenerator {
    /// Generates cover until shutdown. `rng` draws the gaps, sizes and
    /// contents: a CSPRNG seeded from the OS in the daemon, a seeded one
    /// in tests.
    pub async fn run<R: Rng + Send>(self, mut rng: R, shutdown: CancellationToken) {
        loop {
            // Exponential gap: the arrivals form a Poisson process.
            let u: f64 = 1.0 - rng.random::<f64>();
            let gap = self.interval.mul_f64(-u.ln());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(gap) => {}
            }
            // During an outage the arrivals that fall due are skipped, not
            // saved up: on recovery cover goes on at its usual rate, with
            // no burst to make up for the pause.
            if self.health.in_outage() {
                Stats::add(&self.stats.cover_paused, 1);
                continue;
            }
            let message = make_message(&self.key, &self.own, &mut rng);
            let release = self.mix.release_at((self.clock)(), &mut rng);
            match self.queue.enqueue(message, release).await {
                EnqueueOutcome::Queued => Stats::add(&self.stats.cover_sent, 1),
                EnqueueOutcome::ShuttingDown => return,
                other => error!("[MIX] cover message not queued: {other:?}"),
            }
            debug!("[MIX] cover message queued");
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn own() -> OnionName {
        OnionName::from_seed(1)
    }

    #[test]
    fn it_recognizes_its_own_cover_and_nothing_else() {
        let mut rng = StdRng::seed_from_u64(6);
        let key = CoverKey::from_bytes([7; 32]);
        let other = CoverKey::from_bytes([8; 32]);
        let m = make_message(&key, &own(), &mut rng);
        assert!(key.is_cover(&m.body));
        assert!(
            !other.is_cover(&m.body),
            "another node's key does not verify"
        );
        // Tampering with the tag breaks it.
        let mut forged = m.body.clone();
        let pos = forged.windows(1).position(|w| w == b".").unwrap();
        forged[pos + 1] = if forged[pos + 1] == b'0' { b'1' } else { b'0' };
        assert!(!key.is_cover(&forged));
        assert!(!key.is_cover(b"X-Pluto2-Cover: 00.00\r\n\r\nbody"));
        assert!(!key.is_cover(b"Subject: hello\r\n\r\nX-Pluto2-Cover: in the body\r\n"));
    }

    /// The marker line of a fresh cover message, without its CRLF.
    fn marker_line(key: &CoverKey) -> Vec<u8> {
        let m = make_message(key, &own(), &mut StdRng::seed_from_u64(10));
        m.body.split(|&b| b == b'\r').next().unwrap().to_vec()
    }

    #[test]
    fn it_recognizes_markers_in_any_header_shape() {
        let key = CoverKey::from_bytes([3; 32]);
        let line = marker_line(&key);
        let value = &line[MARKER.len() + 1..];
        let with = |prefix: &[u8], suffix: &[u8]| [prefix, value, suffix].concat();
        let recognized = [
            // Alone, as a bare header block without body.
            with(b"X-Pluto2-Cover:", b""),
            with(b"x-pluto2-cover:", b"\r\n"),
            // Folded by a relay on the way, and with obsolete spacing.
            with(b"Subject: s\r\nX-Pluto2-Cover:\r\n\t", b"\r\n\r\nbody"),
            with(b"X-Pluto2-Cover :", b"\r\n\r\n"),
            // Upper-case hex from a rewriting relay.
            [b"X-Pluto2-Cover:", value.to_ascii_uppercase().as_slice()].concat(),
        ];
        for message in &recognized {
            assert!(
                key.is_cover(message),
                "{}",
                String::from_utf8_lossy(message)
            );
        }
        let refused = [
            // After the header block, or not a field of its own.
            with(b"Subject: s\r\n\r\nX-Pluto2-Cover:", b""),
            with(b"Subject: s\r\n X-Pluto2-Cover:", b""),
            with(b"X-Pluto2-Cover-Not:", b""),
            // Longer than any marker: refused before decoding.
            with(b"X-Pluto2-Cover:", &[b' '; MAX_MARKER_VALUE]),
        ];
        for message in &refused {
            assert!(
                !key.is_cover(message),
                "{}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn it_writes_the_body_as_mime_base64() {
        let mut rng = StdRng::seed_from_u64(12);
        let key = CoverKey::from_bytes([4; 32]);
        for _ in 0..20 {
            let m = make_message(&key, &own(), &mut rng);
            let body = header::split(&m.body).body.expect("a body");
            assert!(body.ends_with(b"\r\n"));
            assert!(body.split(|&b| b == b'\n').all(|line| line.len() <= 77));
            let content = data_encoding::BASE64_MIME.decode(body).expect("base64");
            assert!(content.len() >= 200 / 4 * 3, "{}", content.len());
        }
    }

    #[test]
    fn it_survives_padding_and_stripping() {
        let mut rng = StdRng::seed_from_u64(7);
        let key = CoverKey::from_bytes([9; 32]);
        let m = make_message(&key, &own(), &mut rng);
        let padded = crate::message::padding::pad(&m.body, 8192, &mut rng);
        assert!(key.is_cover(crate::message::padding::strip(&padded)));
    }

    #[test]
    fn cover_sizes_look_like_mail() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut sizes: Vec<usize> = (0..2001).map(|_| cover_size(&mut rng)).collect();
        sizes.sort();
        let median = sizes[1000];
        assert!((2000..4500).contains(&median), "median {median}");
        assert!(sizes[0] >= 200 && sizes[2000] <= 262_144);
        assert!(sizes[1900] > 3 * median, "long tail");
    }

    /// Records what the generator queues and when (on the test's clock).
    struct Recorder {
        clock: Clock,
        queued: std::sync::Mutex<Vec<(UnixMillis, UnixMillis)>>,
    }

    impl MailCoverSink for Recorder {
        fn enqueue(&self, _: Message, release_at: UnixMillis) -> BoxFuture<'_, EnqueueOutcome> {
            self.queued
                .lock()
                .unwrap()
                .push(((self.clock)(), release_at));
            Box::pin(async { EnqueueOutcome::Queued })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn it_generates_cover_as_a_poisson_process_with_mixed_release_times() {
        const BASE: UnixMillis = 1_700_000_000_000;
        let clock = crate::testkit::tokio_clock(BASE);
        let recorder = Arc::new(Recorder {
            clock: clock.clone(),
            queued: Default::default(),
        });
        let window = Duration::from_secs(30);
        let generator = CoverGenerator {
            key: CoverKey::from_bytes([2; 32]),
            own: own(),
            queue: recorder.clone(),
            mix: MixPolicy::Batch {
                window,
                jitter_min: Duration::from_millis(100),
                jitter_max: Duration::from_secs(2),
            },
            interval: Duration::from_secs(15),
            stats: Arc::new(Stats::default()),
            clock,
            health: Arc::default(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(generator.run(StdRng::seed_from_u64(11), stop.clone()));
        // Eight simulated hours: about 1,920 messages at one per 15 s.
        tokio::time::sleep(Duration::from_secs(8 * 3600)).await;
        stop.cancel();
        task.await.unwrap();

        let queued = recorder.queued.lock().unwrap().clone();
        let n = queued.len();
        assert!((1700..2150).contains(&n), "{n} cover messages in 8 h");
        let mut last = BASE;
        let gaps: Vec<f64> = queued
            .iter()
            .map(|&(at, _)| {
                let gap = (at - last) as f64 / 1000.0;
                last = at;
                gap
            })
            .collect();
        let d = crate::testkit::ks_statistic(gaps, |x| 1.0 - (-x / 15.0).exp());
        assert!(d < crate::testkit::ks_critical(n), "KS D = {d}");
        // Each message's release time comes from the mix at its creation:
        // after the end of its batch window, within one jitter.
        let w = window.as_millis() as u64;
        for &(at, release) in &queued {
            let window_end = (at / w + 1) * w;
            assert!(
                (window_end + 100..=window_end + 2000).contains(&release),
                "created {at}, released {release}"
            );
        }
    }

    /// On paused time: no cover while deliveries fail for want of Tor,
    /// and after recovery the usual rate, without a burst making up for
    /// the pause.
    #[tokio::test(start_paused = true)]
    async fn it_pauses_cover_during_an_outage_and_resumes_without_a_burst() {
        const BASE: UnixMillis = 1_700_000_000_000;
        let clock = crate::testkit::tokio_clock(BASE);
        let recorder = Arc::new(Recorder {
            clock: clock.clone(),
            queued: Default::default(),
        });
        let health = Arc::new(DeliveryHealth::default());
        health.record(&[proxy_down()]);
        assert!(health.in_outage());
        let stats = Arc::new(Stats::default());
        let generator = CoverGenerator {
            key: CoverKey::from_bytes([2; 32]),
            own: own(),
            queue: recorder.clone(),
            mix: MixPolicy::Immediate,
            interval: Duration::from_secs(15),
            stats: stats.clone(),
            clock,
            health: health.clone(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(generator.run(StdRng::seed_from_u64(13), stop.clone()));
        // One hour of outage: about 240 arrivals, none queued.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(recorder.queued.lock().unwrap().is_empty());
        let paused = Stats::get(&stats.cover_paused);
        assert!((180..300).contains(&paused), "{paused} arrivals skipped");
        health.record(&[crate::relay::client::RecipientResult::Delivered]);
        // The first minute after recovery holds about four, not a backlog.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let first_minute = recorder.queued.lock().unwrap().len();
        assert!(first_minute <= 12, "{first_minute} in the first minute");
        tokio::time::sleep(Duration::from_secs(3540)).await;
        let hour = recorder.queued.lock().unwrap().len();
        assert!((180..300).contains(&hour), "{hour} in the hour after");
        stop.cancel();
        task.await.unwrap();
    }

    fn proxy_down() -> crate::relay::client::RecipientResult {
        use crate::relay::failure::{Failure, FailureKind, ProxyProblem};
        crate::relay::client::RecipientResult::Failed(Failure::temporary(FailureKind::Proxy(
            ProxyProblem::Unreachable(std::io::ErrorKind::ConnectionRefused),
        )))
    }

    #[test]
    fn the_key_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = CoverKey::load_or_create(dir.path()).unwrap();
        let b = CoverKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.0, b.0);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
