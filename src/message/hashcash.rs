//! Hashcash stamps (version 1): reading the date an author's stamp carries,
//! and minting one at the exit.
//!
//! A stamp is `ver:bits:date:resource:ext:rand:counter`; its worth is the
//! number of leading zero bits of the SHA-1 of the stamp string. Mail-to-news
//! gateways (m2usenet among them) demand a stamp of some bits for their own
//! address, so an exit that drops or cannot make one loses those posts.
//!
//! The date field is what matters for anonymity: `YYMMDD` says only the
//! day, but `YYMMDDhhmm[ss]` says when the author sat at the keyboard, to
//! the minute, past every mix delay. The sanitizer keeps the first kind and
//! drops the second ([`classify`]).
//!
//! Pure: strings in, values out; the date to mint with is handed in, never
//! read from a clock here.

use sha1::{Digest, Sha1};

/// What the sanitizer makes of one stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StampClass {
    /// A well-formed version 1 stamp whose date is a day (`YYMMDD`): kept.
    Day,
    /// A well-formed stamp whose date carries a time of day: dropped, it
    /// would date the writing of the mail to the minute.
    TimeOfDay,
    /// Not a version 1 stamp we can read: dropped, since we cannot tell
    /// what its date field reveals, and a gateway refuses it anyway.
    Malformed,
}

/// Longest stamp we read; a real one is well under 200 bytes, and SHA-1
/// over a header value of unbounded length is work nobody needs.
const MAX_STAMP: usize = 512;

/// Why no stamp was minted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MintError {
    /// The resource holds a `:` or whitespace, which would break the
    /// stamp's fields apart (an envelope address never does).
    #[error("the resource cannot go into a stamp")]
    BadResource,
    /// No counter within the budget gave enough zero bits.
    #[error("no stamp of {bits} bits within {attempts} attempts")]
    GaveUp { bits: u8, attempts: u64 },
}

/// Sorts the value of an `X-Hashcash:` or `Hashcash:` header. Whitespace
/// around the stamp is ignored; anything else that does not fit version 1
/// (whitespace inside it too: a stamp is one token) is
/// [`StampClass::Malformed`].
pub fn classify(value: &[u8]) -> StampClass {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > MAX_STAMP {
        return StampClass::Malformed;
    }
    let fields: Vec<&[u8]> = value.split(|&b| b == b':').collect();
    let [ver, bits, date, resource, _ext, rand, counter] = fields[..] else {
        return StampClass::Malformed;
    };
    let well_formed = ver == b"1"
        && !bits.is_empty()
        && bits.len() <= 3
        && bits.iter().all(u8::is_ascii_digit)
        && !resource.is_empty()
        && !resource
            .iter()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        && is_base64ish(rand)
        && is_base64ish(counter);
    if !well_formed {
        return StampClass::Malformed;
    }
    match date_precision(date) {
        Some(DatePrecision::Day) => StampClass::Day,
        Some(DatePrecision::TimeOfDay) => StampClass::TimeOfDay,
        None => StampClass::Malformed,
    }
}

/// The leading zero bits of the SHA-1 of `stamp`: what the stamp is worth
/// (hashcash's own definition, over the stamp string exactly as written).
#[cfg(test)]
pub fn leading_zero_bits(stamp: &[u8]) -> u32 {
    zero_bits(&Sha1::digest(stamp))
}

/// A version 1 stamp for `resource` of at least `bits` bits, dated `date`
/// (day precision only), with `rand` as its random field. Tries counters
/// until one gives enough zero bits, using at most `*budget` attempts and
/// taking the ones it used off `*budget`, so several stamps for one
/// message share one bound.
///
/// Expected cost 2^`bits` SHA-1 computations; call it off the async
/// executor.
pub fn mint(
    resource: &str,
    bits: u8,
    date: time::Date,
    rand: &[u8; 12],
    budget: &mut u64,
) -> Result<String, MintError> {
    if resource.is_empty()
        || resource.len() > MAX_STAMP / 2
        || resource
            .bytes()
            .any(|b| b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(MintError::BadResource);
    }
    let prefix = format!(
        "1:{bits}:{:02}{:02}{:02}:{resource}::{}:",
        date.year().rem_euclid(100),
        u8::from(date.month()),
        date.day(),
        data_encoding::BASE64.encode(rand),
    );
    // The prefix is hashed once; each attempt only adds its counter.
    let base = Sha1::new().chain_update(prefix.as_bytes());
    let mut counter: u64 = 0;
    let mut digits = [0u8; 16];
    while *budget > 0 {
        *budget -= 1;
        let written = hex(counter, &mut digits);
        let digest = base.clone().chain_update(written).finalize();
        if zero_bits(&digest) >= u32::from(bits) {
            return Ok(format!("{prefix}{}", String::from_utf8_lossy(written)));
        }
        counter += 1;
    }
    Err(MintError::GaveUp {
        bits,
        attempts: counter,
    })
}

enum DatePrecision {
    Day,
    TimeOfDay,
}

/// `YYMMDD` is a day; `YYMMDDhhmm` and `YYMMDDhhmmss` carry a time of day.
/// Month, day and the time's fields must be in range, or it is no date.
fn date_precision(date: &[u8]) -> Option<DatePrecision> {
    if !date.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let two = |at: usize| u32::from(date[at] - b'0') * 10 + u32::from(date[at + 1] - b'0');
    let day_ok =
        |d: &[u8]| d.len() >= 6 && (1..=12).contains(&two(2)) && (1..=31).contains(&two(4));
    match date.len() {
        6 if day_ok(date) => Some(DatePrecision::Day),
        10 if day_ok(date) && two(6) < 24 && two(8) < 60 => Some(DatePrecision::TimeOfDay),
        12 if day_ok(date) && two(6) < 24 && two(8) < 60 && two(10) < 61 => {
            Some(DatePrecision::TimeOfDay)
        }
        _ => None,
    }
}

/// The random and counter fields: base64 characters (hashcash writes
/// them so), non-empty.
fn is_base64ish(field: &[u8]) -> bool {
    !field.is_empty()
        && field
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

fn zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for &byte in digest {
        if byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// `n` in lowercase hex without leading zeros, written into `buf`.
fn hex(mut n: u64, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_sorts_stamps_by_what_their_date_reveals() {
        let cases: &[(&str, StampClass)] = &[
            (
                "1:24:261207:news@gw.example::McMybZIhxKXu57jd:ckvi",
                StampClass::Day,
            ),
            (" 1:20:991231:a::x:0 \r\n", StampClass::Day),
            (
                "1:24:2612071530:news@gw.example::McMybZIhxKXu57jd:ckvi",
                StampClass::TimeOfDay,
            ),
            (
                "1:24:261207153012:news@gw.example::McMybZIhxKXu57jd:ckvi",
                StampClass::TimeOfDay,
            ),
            // Not version 1, wrong field count, bad dates, bad fields.
            ("0:261207:news@gw.example:abc", StampClass::Malformed),
            ("2:24:261207:news@gw.example::a:b", StampClass::Malformed),
            ("1:24:261207:news@gw.example:a:b", StampClass::Malformed),
            ("1:24:26120:news@gw.example::a:b", StampClass::Malformed),
            ("1:24:2612071:news@gw.example::a:b", StampClass::Malformed),
            ("1:24:261307:news@gw.example::a:b", StampClass::Malformed),
            ("1:24:261200:news@gw.example::a:b", StampClass::Malformed),
            (
                "1:24:2612072460:news@gw.example::a:b",
                StampClass::Malformed,
            ),
            (
                "1:24:26120715ab:news@gw.example::a:b",
                StampClass::Malformed,
            ),
            ("1:x:261207:news@gw.example::a:b", StampClass::Malformed),
            ("1:24:261207:::a:b", StampClass::Malformed),
            ("1:24:261207:news@gw.example::a:", StampClass::Malformed),
            ("1:24:261207:news@gw.example::a b:c", StampClass::Malformed),
            ("1:24:261207:a b::a:c", StampClass::Malformed),
            ("", StampClass::Malformed),
        ];
        for (stamp, class) in cases {
            assert_eq!(classify(stamp.as_bytes()), *class, "{stamp:?}");
        }
        let long = format!("1:24:261207:{}::a:b", "x".repeat(MAX_STAMP));
        assert_eq!(classify(long.as_bytes()), StampClass::Malformed);
    }

    #[test]
    fn it_mints_a_day_stamp_with_the_bits_asked_for() {
        let date = time::Date::from_calendar_date(2026, time::Month::December, 7).unwrap();
        for bits in [0u8, 1, 8, 16] {
            let mut budget = 1 << 24;
            let stamp = mint("mail2news@gw.example", bits, date, &[7; 12], &mut budget).unwrap();
            assert!(stamp.starts_with(&format!("1:{bits}:261207:mail2news@gw.example::")));
            assert!(
                leading_zero_bits(stamp.as_bytes()) >= u32::from(bits),
                "{stamp}"
            );
            assert_eq!(classify(stamp.as_bytes()), StampClass::Day, "{stamp}");
        }
    }

    #[test]
    fn it_gives_up_when_the_budget_runs_out_and_spends_it() {
        let date = time::Date::from_calendar_date(2026, time::Month::January, 2).unwrap();
        let mut budget = 100;
        let err = mint("a@b.example", 40, date, &[1; 12], &mut budget).unwrap_err();
        assert_eq!(
            err,
            MintError::GaveUp {
                bits: 40,
                attempts: 100
            }
        );
        assert_eq!(budget, 0);
        let mut budget = 100;
        assert_eq!(
            mint("a:b@c", 1, date, &[1; 12], &mut budget),
            Err(MintError::BadResource)
        );
        assert_eq!(budget, 100);
    }

    #[test]
    fn it_counts_leading_zero_bits_of_sha1() {
        // SHA-1("abc") = a9993e36…: the first bit is set.
        assert_eq!(leading_zero_bits(b"abc"), 0);
        assert_eq!(zero_bits(&[0, 0, 0x10, 0xff]), 19);
        assert_eq!(zero_bits(&[0; 20]), 160);
        let mut buf = [0; 16];
        assert_eq!(hex(0, &mut buf), b"0");
        assert_eq!(hex(0x1a2b, &mut buf), b"1a2b");
    }
}
