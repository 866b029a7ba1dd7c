//! The signed directory: operators' detached signatures over `nodes.json`
//! and the decision whether a node accepts a file.
//!
//! `nodes.json.sig` lies beside `nodes.json` and holds one line per
//! signature, `<signer public key> <signature>`, both standard base64: an
//! ed25519 key (32 bytes) and its signature (64 bytes) over the exact
//! bytes of `nodes.json`. Blank lines and lines starting with `#` are
//! ignored. Signing the bytes rather than a canonical form of the JSON
//! keeps the check free of any parser: what was signed is what is read.
//!
//! A node started with `-pki-trust` ([`Trust`]) accepts a file only when
//! at least `-pki-threshold` distinct trusted keys signed it (checked with
//! `verify_strict`, which refuses the malleable and small-order forms),
//! when it carries `serial`, `issued` and `expires`, when it has not
//! expired and when its serial is not below the highest one this node
//! accepted before (a rollback to an older directory, with nodes since
//! removed, would let whoever kept it steer routes). Lines by other keys
//! and signatures that do not verify are ignored, but counted in the
//! refusal so an operator sees why the threshold was missed.
//!
//! Without `-pki-trust` any file that parses is accepted, with warnings
//! for the log: that is for private test networks only.
//!
//! Pure: bytes, the saved serial and the time come in; reading the files,
//! keeping the serial and the clock are the daemon's (`daemon::directory`).
//! [`accept`] is the one decision, made the same way at start, on reload
//! and by `pluto2 pki verify`.

use std::fmt;

use data_encoding::BASE64;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use super::pki::{Directory, PkiError, Reader};
use crate::time::UnixMillis;

/// Largest signature file read: a line is about 135 bytes, so this holds
/// hundreds of signatures, and a wrong path is refused before it is read.
pub const MAX_SIG_FILE: usize = 64 * 1024;
/// Longest line considered, so an error can quote a prefix of it.
const MAX_LINE: usize = 512;

/// One signature line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigLine {
    /// Line number in the file, from 1, for messages.
    pub line: usize,
    /// The signer's public key bytes, compared with the trusted keys as
    /// bytes (a key that is not a curve point is simply not trusted).
    pub signer: [u8; 32],
    pub signature: [u8; 64],
}

/// Why a signature file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigFileError {
    #[error("{0} bytes; a signature file is at most {MAX_SIG_FILE} bytes: is this the right file?")]
    TooLarge(usize),
    #[error(
        "line {line}: {what}; each line is `<signer public key> <signature>` in base64, as `pluto2 pki sign` writes it"
    )]
    Line { line: usize, what: String },
}

/// Decodes base64 into exactly `N` bytes, saying what is wrong otherwise.
fn decode<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = BASE64
        .decode(text.as_bytes())
        .map_err(|e| format!("the {what} is not base64 ({e})"))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("the {what} is {} bytes, not {N}", bytes.len()))
}

/// Reads a signature file. Every line must be blank, a `#` comment or a
/// signature line; anything else is refused with its line number, since a
/// mangled file usually means a mangled copy and the operator should know.
pub fn parse_signatures(bytes: &[u8]) -> Result<Vec<SigLine>, SigFileError> {
    if bytes.len() > MAX_SIG_FILE {
        return Err(SigFileError::TooLarge(bytes.len()));
    }
    let mut lines = Vec::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let wrong = |what: String| SigFileError::Line { line, what };
        if raw.len() > MAX_LINE {
            return Err(wrong(format!("{} bytes long", raw.len())));
        }
        let text = std::str::from_utf8(raw).map_err(|_| wrong("not text (UTF-8)".into()))?;
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [signer, signature] = fields[..] else {
            return Err(wrong(format!("{} fields, not 2", fields.len())));
        };
        lines.push(SigLine {
            line,
            signer: decode(signer, "public key").map_err(wrong)?,
            signature: decode(signature, "signature").map_err(wrong)?,
        });
    }
    Ok(lines)
}

/// The line `pluto2 pki sign` writes for `key` over `file`.
pub fn signature_line(key: &SigningKey, file: &[u8]) -> String {
    use ed25519_dalek::Signer;
    format!(
        "{} {}",
        BASE64.encode(key.verifying_key().as_bytes()),
        BASE64.encode(&key.sign(file).to_bytes())
    )
}

/// The signature file after `key` signed `file`: `existing` (the current
/// signature file, empty if none) with the line of this key replaced, or
/// the new line appended. Comments and other signers' lines stay as they
/// are, so operators can sign one after another in any order.
pub fn add_signature(
    existing: &[u8],
    key: &SigningKey,
    file: &[u8],
) -> Result<String, SigFileError> {
    let signer = key.verifying_key().to_bytes();
    let replaced: Vec<usize> = parse_signatures(existing)?
        .iter()
        .filter(|l| l.signer == signer)
        .map(|l| l.line)
        .collect();
    // parse_signatures accepted it, so it is UTF-8.
    let text = String::from_utf8_lossy(existing);
    let mut out: Vec<String> = Vec::new();
    let mut written = false;
    for (index, line) in text.split('\n').enumerate() {
        if !replaced.contains(&(index + 1)) {
            out.push(line.to_string());
        } else if !written {
            // The first line of this key takes the new signature; any
            // later one (a duplicate left by hand) is dropped.
            out.push(signature_line(key, file));
            written = true;
        }
    }
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    if !written {
        out.push(signature_line(key, file));
    }
    Ok(out.join("\n") + "\n")
}

/// The operator keys a node trusts (`-pki-trust`) and how many of them
/// must sign (`-pki-threshold`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    keys: Vec<VerifyingKey>,
    threshold: usize,
}

/// What is wrong with `-pki-trust` or `-pki-threshold`; the caller names
/// the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error(
        "key {index} ({value:?}) {what}; give the base64 public keys `pluto2 pki sign` printed, separated by commas"
    )]
    BadKey {
        index: usize,
        value: String,
        what: String,
    },
    #[error("key {index} is the same as key {first}: each operator's key is listed once")]
    Repeated { index: usize, first: usize },
    #[error("must be 1 to {keys} (the number of -pki-trust keys)")]
    Threshold { keys: usize },
}

impl Trust {
    /// Reads comma-separated base64 keys; `threshold` defaults to 1.
    pub fn new(keys: &str, threshold: Option<i64>) -> Result<Trust, TrustError> {
        let mut parsed: Vec<VerifyingKey> = Vec::new();
        for (i, value) in keys.split(',').map(str::trim).enumerate() {
            let index = i + 1;
            let bad = |what: String| TrustError::BadKey {
                index,
                value: value.chars().take(64).collect(),
                what,
            };
            let bytes: [u8; 32] =
                decode(value, "key").map_err(|e| bad(e.replacen("the key ", "", 1)))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| bad("is not an ed25519 public key".into()))?;
            if key.is_weak() {
                return Err(bad("is a weak (small-order) key".into()));
            }
            if let Some(first) = parsed.iter().position(|k| *k == key) {
                return Err(TrustError::Repeated {
                    index,
                    first: first + 1,
                });
            }
            parsed.push(key);
        }
        let threshold = threshold.unwrap_or(1);
        if threshold < 1 || threshold as usize > parsed.len() {
            return Err(TrustError::Threshold { keys: parsed.len() });
        }
        Ok(Trust {
            keys: parsed,
            threshold: threshold as usize,
        })
    }

    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }
}

/// How the signature lines of one file fared against a [`Trust`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Distinct trusted keys with a valid signature: what counts.
    pub valid: usize,
    /// How many are needed.
    pub needed: usize,
    /// Trusted keys in all.
    pub trusted: usize,
    /// Lines by keys not trusted here (not checked further).
    pub untrusted: usize,
    /// Lines by trusted keys whose signature does not verify: usually a
    /// file changed after it was signed.
    pub invalid: usize,
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for Tally {
    /// `2 valid signatures from trusted keys, 3 needed (1 line signed by
    /// an untrusted key, 1 invalid)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} from trusted keys, {} needed",
            plural(self.valid, "valid signature", "valid signatures"),
            self.needed
        )?;
        let mut ignored = Vec::new();
        if self.untrusted > 0 {
            ignored.push(format!(
                "{} by an untrusted key",
                plural(self.untrusted, "line signed", "lines signed")
            ));
        }
        if self.invalid > 0 {
            ignored.push(format!("{} invalid", self.invalid));
        }
        if !ignored.is_empty() {
            write!(f, " ({})", ignored.join(", "))?;
        }
        Ok(())
    }
}

/// Counts the distinct trusted keys whose signature over `file` is valid.
/// A key signing twice counts once.
pub fn count_signatures(file: &[u8], lines: &[SigLine], trust: &Trust) -> Tally {
    let mut signed = vec![false; trust.keys.len()];
    let mut tally = Tally {
        valid: 0,
        needed: trust.threshold,
        trusted: trust.keys.len(),
        untrusted: 0,
        invalid: 0,
    };
    for line in lines {
        let Some(k) = trust.keys.iter().position(|k| *k.as_bytes() == line.signer) else {
            tally.untrusted += 1;
            continue;
        };
        let signature = Signature::from_bytes(&line.signature);
        if trust.keys[k].verify_strict(file, &signature).is_ok() {
            signed[k] = true;
        } else {
            tally.invalid += 1;
        }
    }
    tally.valid = signed.iter().filter(|s| **s).count();
    tally
}

/// Lines whose signature does not verify under their own key: for `pluto2
/// pki sign` to tell an operator which earlier signatures a change voided.
pub fn stale_lines(file: &[u8], lines: &[SigLine]) -> usize {
    lines
        .iter()
        .filter(|l| {
            VerifyingKey::from_bytes(&l.signer)
                .and_then(|k| k.verify_strict(file, &Signature::from_bytes(&l.signature)))
                .is_err()
        })
        .count()
}

/// Everything the decision needs, all of it values.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The exact bytes of `nodes.json`.
    pub file: &'a [u8],
    /// The signature file's bytes; `None` when there is none.
    pub signatures: Option<&'a [u8]>,
    /// `None` without `-pki-trust`: signatures are not checked.
    pub trust: Option<&'a Trust>,
    /// The highest serial this node accepted before, if any.
    pub saved_serial: Option<u64>,
    pub now: UnixMillis,
    /// Who reads the file (a node, or a client of one gateway); `None`
    /// to check it as every node it lists would (`pluto2 pki verify`).
    pub reader: Option<Reader<'a>>,
}

/// A file a node may use.
#[derive(Debug)]
pub struct Accepted {
    pub directory: Directory,
    /// The distinct trusted keys that signed it (`None`: not checked).
    pub signed: Option<Tally>,
    /// What the log must say about it (unsigned mode), one line each.
    pub warnings: Vec<&'static str>,
}

impl Accepted {
    /// The serial to keep as the highest accepted, when it is higher than
    /// `saved` (or none is saved yet).
    pub fn serial_to_save(&self, saved: Option<u64>) -> Option<u64> {
        let serial = self.directory.validity().serial?;
        (saved.is_none_or(|s| serial > s)).then_some(serial)
    }
}

/// Why a node refuses a file; each is one line that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryRefusal {
    #[error(
        "no signature file beside it (the same name + .sig), and -pki-trust asks for {0} signature(s); each operator signs with `pluto2 pki sign -key KEYFILE nodes.json`"
    )]
    Unsigned(usize),
    #[error("its signature file, {0}")]
    SigFile(#[from] SigFileError),
    #[error(
        "{0}; more operators must sign these exact bytes with `pluto2 pki sign` (a file changed after signing needs every signature again)"
    )]
    Insufficient(Tally),
    #[error(
        "no \"{0}\": with -pki-trust a nodes.json must carry \"serial\", \"issued\" and \"expires\""
    )]
    MissingField(&'static str),
    #[error(
        "serial {serial} is lower than {saved}, the highest this node accepted: refusing a rollback to an older directory; use the current nodes.json"
    )]
    Rollback { serial: u64, saved: u64 },
    #[error(
        "expired at {expires} (now {now}); the operators must publish a nodes.json with a later \"expires\" and a higher \"serial\", and sign it"
    )]
    Expired { expires: String, now: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

const UNSIGNED: &str = "nodes.json is not signature-checked (no -pki-trust): whoever can change the file chooses this node's routes; this is only for private test networks";
const SIGNATURES_IGNORED: &str = "nodes.json has a signature file, but without -pki-trust its signatures are not checked; pass the operators' keys with -pki-trust";

/// RFC 3339 to the second, in UTC.
fn show(when: time::OffsetDateTime) -> String {
    use time::format_description::well_known::Rfc3339;
    when.replace_nanosecond(0)
        .ok()
        .and_then(|w| w.format(&Rfc3339).ok())
        .unwrap_or_else(|| when.unix_timestamp().to_string())
}

/// Decides whether a node accepts `c.file`: signatures first (with
/// `-pki-trust`, nothing of an unsigned file is believed), then the
/// contents, then the validity fields against the saved serial and the
/// time.
pub fn accept(c: &Candidate<'_>) -> Result<Accepted, DirectoryRefusal> {
    let mut warnings = Vec::new();
    let signed = match c.trust {
        Some(trust) => {
            let Some(sig) = c.signatures else {
                return Err(DirectoryRefusal::Unsigned(trust.threshold));
            };
            let tally = count_signatures(c.file, &parse_signatures(sig)?, trust);
            if tally.valid < tally.needed {
                return Err(DirectoryRefusal::Insufficient(tally));
            }
            Some(tally)
        }
        None => {
            warnings.push(UNSIGNED);
            if c.signatures.is_some() {
                warnings.push(SIGNATURES_IGNORED);
            }
            None
        }
    };
    let directory = match c.reader {
        Some(reader) => Directory::parse_as(c.file, reader)?,
        None => Directory::parse_for_every_node(c.file)?,
    };
    let validity = *directory.validity();
    if c.trust.is_some() {
        for (name, present) in [
            ("serial", validity.serial.is_some()),
            ("issued", validity.issued.is_some()),
            ("expires", validity.expires.is_some()),
        ] {
            if !present {
                return Err(DirectoryRefusal::MissingField(name));
            }
        }
    }
    if let Some(expires) = validity.expires {
        let now_nanos = i128::from(c.now) * 1_000_000;
        if now_nanos >= expires.unix_timestamp_nanos() {
            let now = time::OffsetDateTime::from_unix_timestamp_nanos(now_nanos)
                .map(show)
                .unwrap_or_else(|_| c.now.to_string());
            return Err(DirectoryRefusal::Expired {
                expires: show(expires),
                now,
            });
        }
    }
    if let (Some(serial), Some(saved)) = (validity.serial, c.saved_serial)
        && serial < saved
    {
        return Err(DirectoryRefusal::Rollback { serial, saved });
    }
    Ok(Accepted {
        directory,
        signed,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::OnionName;
    use serde_json::{Value, json};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn public(seed: u8) -> String {
        BASE64.encode(key(seed).verifying_key().as_bytes())
    }

    fn trust(seeds: &[u8], threshold: i64) -> Trust {
        let keys: Vec<String> = seeds.iter().map(|s| public(*s)).collect();
        Trust::new(&keys.join(","), Some(threshold)).unwrap()
    }

    fn sign(seeds: &[u8], file: &[u8]) -> String {
        let mut sig = String::new();
        for s in seeds {
            sig = add_signature(sig.as_bytes(), &key(*s), file).unwrap();
        }
        sig
    }

    fn tally(file: &[u8], sig: &str, trust: &Trust) -> Tally {
        count_signatures(file, &parse_signatures(sig.as_bytes()).unwrap(), trust)
    }

    const FILE: &[u8] = b"{\"nodes\": []}\n";

    #[test]
    fn it_counts_valid_signatures_by_trusted_keys() {
        let sig = sign(&[1, 2], FILE);
        assert_eq!(sig.lines().count(), 2);
        let t = tally(FILE, &sig, &trust(&[1, 2, 3], 2));
        assert_eq!((t.valid, t.needed, t.untrusted, t.invalid), (2, 2, 0, 0));
    }

    #[test]
    fn it_refuses_a_signature_over_a_tampered_byte() {
        let sig = sign(&[1], FILE);
        let mut changed = FILE.to_vec();
        changed[3] ^= 1;
        let t = tally(&changed, &sig, &trust(&[1], 1));
        assert_eq!((t.valid, t.invalid), (0, 1));
        // One byte more at the end is a change too.
        let t = tally(&[FILE, b" "].concat(), &sig, &trust(&[1], 1));
        assert_eq!((t.valid, t.invalid), (0, 1));
    }

    #[test]
    fn it_ignores_lines_by_untrusted_keys_and_keys_claiming_anothers_signature() {
        let sig = sign(&[1, 4], FILE);
        let t = tally(FILE, &sig, &trust(&[1, 2], 2));
        assert_eq!((t.valid, t.untrusted, t.invalid), (1, 1, 0));
        // Key 4's signature relabelled as trusted key 2's does not verify.
        let forged = sig.replace(&public(4), &public(2));
        let t = tally(FILE, &forged, &trust(&[1, 2], 2));
        assert_eq!((t.valid, t.untrusted, t.invalid), (1, 0, 1));
    }

    #[test]
    fn it_counts_a_signer_once_however_often_it_signed() {
        let one = signature_line(&key(1), FILE);
        let sig = format!("{one}\n{one}\n{one}\n");
        let t = tally(FILE, &sig, &trust(&[1, 2], 2));
        assert_eq!(t.valid, 1);
    }

    #[test]
    fn it_reads_comments_and_blank_lines() {
        let sig = format!(
            "# nodes.json of 2026-11-18\n\n  {}  \r\n# bob:\n{}\n\n",
            signature_line(&key(1), FILE),
            signature_line(&key(2), FILE)
        );
        let lines = parse_signatures(sig.as_bytes()).unwrap();
        assert_eq!(lines.iter().map(|l| l.line).collect::<Vec<_>>(), [3, 5]);
        assert_eq!(tally(FILE, &sig, &trust(&[1, 2], 2)).valid, 2);
    }

    #[test]
    fn it_names_the_line_of_a_bad_signature_entry() {
        let good = signature_line(&key(1), FILE);
        let (pk, sg) = good.split_once(' ').unwrap();
        let cases = [
            (
                format!("# c\n{good}\n{pk} not*base64\n"),
                3,
                "signature is not base64",
            ),
            (format!("{pk}!! {sg}\n"), 1, "public key is not base64"),
            (format!("\n\n{pk}\n"), 3, "1 fields, not 2"),
            (format!("{good} extra\n"), 1, "3 fields, not 2"),
            (format!("AAAA {sg}\n"), 1, "public key is 3 bytes, not 32"),
            (format!("{pk} {}\n", BASE64.encode(&[0; 63])), 1, "63 bytes"),
        ];
        for (text, line, said) in cases {
            let e = parse_signatures(text.as_bytes()).unwrap_err();
            let shown = e.to_string();
            assert!(
                matches!(e, SigFileError::Line { line: l, .. } if l == line),
                "{shown}"
            );
            assert!(shown.starts_with(&format!("line {line}: ")), "{shown}");
            assert!(shown.contains(said), "{text:?}: {shown}");
            assert!(!shown.contains('\n'));
        }
        let e = parse_signatures(b"\xff\xfe\n").unwrap_err();
        assert!(e.to_string().contains("line 1: not text"), "{e}");
        let big = vec![b'#'; MAX_SIG_FILE + 1];
        assert_eq!(
            parse_signatures(&big).unwrap_err(),
            SigFileError::TooLarge(MAX_SIG_FILE + 1)
        );
    }

    #[test]
    fn it_replaces_a_signers_earlier_line_instead_of_adding_one() {
        let old = b"{\"nodes\": [1]}";
        let sig = format!(
            "# ceremony\n{}\n{}\n",
            signature_line(&key(1), old),
            signature_line(&key(2), old)
        );
        let again = add_signature(sig.as_bytes(), &key(1), FILE).unwrap();
        let lines: Vec<&str> = again.lines().collect();
        assert_eq!(lines.len(), 3, "{again}");
        assert_eq!(lines[0], "# ceremony");
        assert_eq!(lines[1], signature_line(&key(1), FILE));
        assert_eq!(lines[2], signature_line(&key(2), old));
        // Key 2's line still signs the old bytes.
        let parsed = parse_signatures(again.as_bytes()).unwrap();
        assert_eq!(stale_lines(FILE, &parsed), 1);
        // A duplicate left by hand is folded into one line.
        let twice = format!("{again}{}\n", signature_line(&key(1), old));
        let folded = add_signature(twice.as_bytes(), &key(1), FILE).unwrap();
        assert_eq!(folded, again);
        // Refuses to rewrite a file it cannot read.
        assert!(add_signature(b"garbage\n", &key(1), FILE).is_err());
    }

    #[test]
    fn it_reads_trusted_keys_and_bounds_the_threshold() {
        let keys = format!("{}, {}", public(1), public(2));
        let t = Trust::new(&keys, None).unwrap();
        assert_eq!((t.keys().len(), t.threshold()), (2, 1));
        assert_eq!(Trust::new(&keys, Some(2)).unwrap().threshold(), 2);
        for n in [0, 3, -1] {
            assert_eq!(
                Trust::new(&keys, Some(n)).unwrap_err(),
                TrustError::Threshold { keys: 2 }
            );
        }
        let e = Trust::new(&format!("{},{}", public(1), public(1)), None).unwrap_err();
        assert_eq!(e, TrustError::Repeated { index: 2, first: 1 });
        for (list, said) in [
            (
                format!("{},nope!", public(1)),
                "key 2 (\"nope!\") is not base64",
            ),
            ("AAAA".to_string(), "key 1 (\"AAAA\") is 3 bytes"),
            (String::new(), "key 1 (\"\") is 0 bytes"),
            // The identity point: small order, trusts any forgery.
            (
                BASE64.encode(&{
                    let mut k = [0u8; 32];
                    k[0] = 1;
                    k
                }),
                "weak",
            ),
        ] {
            let e = Trust::new(&list, None).unwrap_err().to_string();
            assert!(e.contains(said), "{list}: {e}");
        }
    }

    #[test]
    fn it_reports_the_tally_in_words() {
        let t = Tally {
            valid: 2,
            needed: 3,
            trusted: 4,
            untrusted: 1,
            invalid: 1,
        };
        assert_eq!(
            t.to_string(),
            "2 valid signatures from trusted keys, 3 needed (1 line signed by an untrusted key, 1 invalid)"
        );
        let t = Tally {
            valid: 1,
            needed: 2,
            trusted: 2,
            untrusted: 2,
            invalid: 0,
        };
        assert_eq!(
            t.to_string(),
            "1 valid signature from trusted keys, 2 needed (2 lines signed by an untrusted key)"
        );
    }

    #[test]
    fn it_never_panics_on_random_or_mangled_signature_files() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(0x7369_672e_6669_6c65);
        let valid = sign(&[1, 2, 3], FILE).into_bytes();
        let t = trust(&[1, 2], 2);
        // Few rounds: every one verifies signatures, slow in debug builds.
        for _ in 0..400 {
            let mut bytes = if rng.random() {
                valid.clone()
            } else {
                (0..rng.random_range(0..300))
                    .map(|_| rng.random())
                    .collect()
            };
            for _ in 0..rng.random_range(0..4) {
                if bytes.is_empty() {
                    break;
                }
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] = rng.random(),
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, rng.random()),
                }
            }
            if let Ok(lines) = parse_signatures(&bytes) {
                let tally = count_signatures(FILE, &lines, &t);
                assert!(tally.valid <= 2);
            }
            let _ = add_signature(&bytes, &key(1), FILE);
        }
    }

    // The whole decision, on a real directory.

    fn entry(seed: u8, name: &str) -> Value {
        let onion = OnionName::from_seed(seed);
        let identity = key(seed).verifying_key();
        json!({
            "name": name,
            "onion": onion.to_string(),
            "port": 9999,
            "identity": BASE64.encode(identity.as_bytes()),
            "exit": true,
        })
    }

    /// 2026-11-18T00:00:00Z in unix milliseconds.
    const ISSUED: UnixMillis = 1_794_960_000_000;
    const DAY: UnixMillis = 86_400_000;

    fn directory(serial: u64) -> Vec<u8> {
        json!({
            "serial": serial,
            "issued": "2026-11-18T00:00:00Z",
            "expires": "2026-11-25T00:00:00Z",
            "nodes": [entry(11, "a"), entry(12, "b"), entry(13, "c"), entry(14, "d")],
        })
        .to_string()
        .into_bytes()
    }

    fn candidate<'a>(
        file: &'a [u8],
        sig: Option<&'a [u8]>,
        trust: Option<&'a Trust>,
    ) -> Candidate<'a> {
        Candidate {
            file,
            signatures: sig,
            trust,
            saved_serial: None,
            now: ISSUED + DAY,
            reader: None,
        }
    }

    fn refusal(c: Candidate<'_>) -> String {
        let e = accept(&c).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn it_accepts_a_file_signed_by_enough_trusted_keys() {
        let file = directory(5);
        let sig = sign(&[1, 2], &file);
        let t = trust(&[1, 2, 3], 2);
        let own = OnionName::from_seed(12);
        let c = Candidate {
            reader: Some(Reader::Node(&own)),
            saved_serial: Some(5),
            ..candidate(&file, Some(sig.as_bytes()), Some(&t))
        };
        let ok = accept(&c).unwrap();
        assert_eq!(ok.directory.own().short_name, "b");
        assert_eq!(ok.signed.unwrap().valid, 2);
        assert!(ok.warnings.is_empty());
        assert_eq!(ok.directory.validity().serial, Some(5));
        // Equal to the saved serial: accepted, nothing new to save.
        assert_eq!(ok.serial_to_save(Some(5)), None);
        assert_eq!(ok.serial_to_save(Some(4)), Some(5));
        assert_eq!(ok.serial_to_save(None), Some(5));
    }

    #[test]
    fn a_client_is_held_to_the_signatures_serial_and_expiry_as_a_node_is() {
        let mut doc: Value = serde_json::from_slice(&directory(5)).unwrap();
        doc["nodes"][0]["gateway"] = json!(true);
        let file = doc.to_string().into_bytes();
        let sig = sign(&[1, 2], &file);
        let t = trust(&[1, 2, 3], 2);
        fn client(c: Candidate<'_>) -> Candidate<'_> {
            Candidate {
                reader: Some(Reader::Client("a")),
                ..c
            }
        }
        let (file, sig, t) = (&file[..], sig.as_bytes(), &t);
        let ok = accept(&client(candidate(file, Some(sig), Some(t)))).unwrap();
        assert_eq!(ok.directory.own().short_name, "a");
        assert_eq!(ok.serial_to_save(None), Some(5));
        let e = refusal(client(candidate(file, None, Some(t))));
        assert!(e.starts_with("no signature file"), "{e}");
        let one = sign(&[1], file);
        let e = refusal(client(candidate(file, Some(one.as_bytes()), Some(t))));
        assert!(e.contains("more operators must sign"), "{e}");
        let e = refusal(client(Candidate {
            saved_serial: Some(6),
            ..candidate(file, Some(sig), Some(t))
        }));
        assert!(e.starts_with("serial 5 is lower than 6"), "{e}");
        let e = refusal(client(Candidate {
            now: ISSUED + 7 * DAY,
            ..candidate(file, Some(sig), Some(t))
        }));
        assert!(e.starts_with("expired at"), "{e}");
        // A signed file is still read for the client: its gateway must be one.
        let e = refusal(Candidate {
            reader: Some(Reader::Client("b")),
            ..candidate(file, Some(sig), Some(t))
        });
        assert!(e.starts_with("-via b: its entry lacks"), "{e}");
    }

    #[test]
    fn it_refuses_too_few_missing_or_unreadable_signatures() {
        let file = directory(5);
        let t = trust(&[1, 2, 3], 2);
        let one = sign(&[1], &file);
        let e = refusal(candidate(&file, Some(one.as_bytes()), Some(&t)));
        assert!(
            e.starts_with("1 valid signature from trusted keys, 2 needed"),
            "{e}"
        );
        let e = refusal(candidate(&file, None, Some(&t)));
        assert!(e.starts_with("no signature file beside it"), "{e}");
        assert!(e.contains("pluto2 pki sign"), "{e}");
        let e = refusal(candidate(&file, Some(b"x y z\n"), Some(&t)));
        assert!(e.starts_with("its signature file, line 1: "), "{e}");
        // Signed, then changed: every signature is void.
        let both = sign(&[1, 2], &file);
        let changed = directory(6);
        let e = refusal(candidate(&changed, Some(both.as_bytes()), Some(&t)));
        assert!(
            e.contains("0 valid signatures") && e.contains("2 invalid"),
            "{e}"
        );
    }

    #[test]
    fn it_refuses_a_signed_file_without_its_validity_fields() {
        let t = trust(&[1], 1);
        for field in ["serial", "issued", "expires"] {
            let mut doc: Value = serde_json::from_slice(&directory(5)).unwrap();
            doc.as_object_mut().unwrap().remove(field);
            let file = doc.to_string().into_bytes();
            let sig = sign(&[1], &file);
            let e = refusal(candidate(&file, Some(sig.as_bytes()), Some(&t)));
            assert!(e.starts_with(&format!("no \"{field}\"")), "{e}");
            // Unsigned mode takes the old format.
            accept(&candidate(&file, None, None)).unwrap();
        }
    }

    #[test]
    fn it_refuses_a_rollback_and_accepts_an_equal_or_higher_serial() {
        let t = trust(&[1], 1);
        for (serial, saved, ok) in [(4, 5, false), (5, 5, true), (6, 5, true), (0, 0, true)] {
            let file = directory(serial);
            let sig = sign(&[1], &file);
            let c = Candidate {
                saved_serial: Some(saved),
                ..candidate(&file, Some(sig.as_bytes()), Some(&t))
            };
            match accept(&c) {
                Ok(_) => assert!(ok, "{serial} after {saved}"),
                Err(e) => {
                    assert!(!ok, "{serial} after {saved}: {e}");
                    assert_eq!(e, DirectoryRefusal::Rollback { serial, saved });
                    assert!(e.to_string().contains("rollback"));
                }
            }
        }
    }

    #[test]
    fn it_refuses_a_file_from_the_moment_it_expires() {
        let file = directory(5);
        let sig = sign(&[1], &file);
        let t = trust(&[1], 1);
        let expires = ISSUED + 7 * DAY;
        for (now, ok) in [
            (expires - 1, true),
            (expires, false),
            (expires + DAY, false),
        ] {
            let c = Candidate {
                now,
                ..candidate(&file, Some(sig.as_bytes()), Some(&t))
            };
            assert_eq!(accept(&c).is_ok(), ok, "{now}");
        }
        let e = refusal(Candidate {
            now: expires + 1500,
            ..candidate(&file, Some(sig.as_bytes()), Some(&t))
        });
        assert_eq!(
            e,
            "expired at 2026-11-25T00:00:00Z (now 2026-11-25T00:00:01Z); the operators must publish a nodes.json with a later \"expires\" and a higher \"serial\", and sign it"
        );
        // Unsigned files expire too when they say so.
        assert!(
            accept(&Candidate {
                now: expires,
                ..candidate(&file, None, None)
            })
            .is_err()
        );
    }

    #[test]
    fn it_accepts_an_unsigned_file_without_trust_and_says_so() {
        let file = directory(5);
        let ok = accept(&candidate(&file, None, None)).unwrap();
        assert_eq!(ok.warnings, [UNSIGNED]);
        assert!(ok.signed.is_none());
        let garbage = b"not even read";
        let ok = accept(&candidate(&file, Some(garbage), None)).unwrap();
        assert_eq!(ok.warnings, [UNSIGNED, SIGNATURES_IGNORED]);
    }

    #[test]
    fn it_checks_signatures_before_reading_the_contents() {
        // A file that does not parse, unsigned: the signature is what is
        // refused, so nothing of an unauthenticated file is interpreted.
        let t = trust(&[1], 1);
        let e = refusal(candidate(b"{nodes", None, Some(&t)));
        assert!(e.starts_with("no signature file"), "{e}");
        let e = refusal(candidate(b"{nodes", None, None));
        assert!(e.starts_with("not a valid nodes.json"), "{e}");
    }
}
