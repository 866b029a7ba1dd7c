//! Exit policy: destinations that asked not to receive anonymous mail
//! (`-dest-block FILE`).
//!
//! Remailer operators keep such a list (Mixmaster's `dest.blk`) because
//! people and newsgroups ask to be left out, and an exit that keeps
//! delivering to them gets complaints and abuse reports. The list is read
//! by the daemon (at start and on SIGHUP) and parsed here by
//! [`BlockList::parse`], a pure function; [`DestBlock`] holds the current
//! list so that a reload swaps it in one step while sessions keep running.
//!
//! # Syntax
//!
//! One pattern a line; blank lines and lines starting with `#` are ignored,
//! and so is anything after a `#` that follows whitespace. Like a Postfix
//! access table without `parent_domain_matches_subdomains`:
//!
//! * `user@example.org`: that address. Both parts are compared without
//!   regard to case: RFC 5321 leaves the local part's case to the
//!   destination, but nearly every server ignores it, and someone who asked
//!   to be left out must not be reachable as `User@`.
//! * `example.org`: every address at that domain (not its subdomains).
//! * `.example.org`: every address at any subdomain of it (not the domain
//!   itself; list both lines to block both).
//! * `newsgroup:alt.test`: posts to that group through a mail2news gateway;
//!   `newsgroup:alt.test.*` every group below `alt.test` (not `alt.test`
//!   itself). A post is recognised by the message's `Newsgroups:` header
//!   (how dizum-style gateways such as `mail2news@…` are used) and by a
//!   recipient whose local part is the group name (the
//!   `alt.test@gateway.example` form some gateways take).
//!
//! An onion service is one destination whatever labels are written in front
//! of its name (Tor ignores them), so `<name>.onion` also blocks
//! `mail.<name>.onion`.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use tracing::info;

use crate::address::{parse_domain, parse_mailbox};
use crate::message::header;
use crate::redact::Sensitive;
use crate::smtp::server::RecipientCheck;
use crate::stats::Stats;

/// Longest pattern line; longer is not an address, domain or group name.
const MAX_LINE: usize = 1024;

/// What is wrong with one line of the file. The daemon puts the file name
/// in front; the line number and reason are here.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct BlockListError {
    pub line: usize,
    pub reason: String,
}

/// A bad `-hashcash-for` or `-news-gateway` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// Recipients named on the command line (`-hashcash-for`,
/// `-news-gateway`), written like the address lines of a `-dest-block`
/// file (`user@domain`, `domain`, `.domain`) so an operator learns one
/// syntax, and matched by the same code. Group patterns are refused: these
/// flags name where mail goes, not what it posts to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecipientPatterns(BlockList);

impl RecipientPatterns {
    pub fn parse<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<RecipientPatterns, PatternError> {
        let mut list = BlockList::default();
        for pattern in patterns {
            let err = |reason: String| PatternError {
                pattern: pattern.to_string(),
                reason,
            };
            if strip_prefix_ignore_case(pattern, "newsgroup:").is_some() {
                return Err(err(
                    "a recipient pattern is user@domain, domain or .domain".into()
                ));
            }
            if pattern.is_empty()
                || pattern.len() > MAX_LINE
                || pattern.contains(char::is_whitespace)
            {
                return Err(err("one address, domain or .domain, without spaces".into()));
            }
            list.add(pattern).map_err(err)?;
        }
        Ok(RecipientPatterns(list))
    }

    /// True if `recipient` (`local@domain` as in the envelope) matches.
    pub fn matches(&self, recipient: &str) -> bool {
        !self.0.is_empty() && self.0.blocks(recipient)
    }
}

/// A parsed `-dest-block` file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BlockList {
    /// `local@domain`, lowercased.
    addresses: HashSet<String>,
    /// Exact domains, lowercased (onions by their service name).
    domains: HashSet<String>,
    /// Parents whose subdomains are blocked, lowercased, without the dot.
    parents: HashSet<String>,
    /// Exact group names, lowercased.
    groups: HashSet<String>,
    /// Hierarchies whose groups below are blocked, without `.*`.
    hierarchies: HashSet<String>,
}

impl BlockList {
    /// Parses the whole file; the first bad line is the error.
    pub fn parse(text: &str) -> Result<BlockList, BlockListError> {
        let mut list = BlockList::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |reason: String| BlockListError { line, reason };
            let pattern = strip_comment(raw).trim();
            if pattern.is_empty() {
                continue;
            }
            if pattern.len() > MAX_LINE {
                return Err(err(format!("longer than {MAX_LINE} bytes")));
            }
            if pattern.contains(char::is_whitespace) {
                return Err(err(
                    "one pattern a line, without spaces (an address, a domain, .domain or newsgroup:name)"
                        .into(),
                ));
            }
            list.add(pattern).map_err(err)?;
        }
        Ok(list)
    }

    /// Number of patterns, for the log line.
    pub fn len(&self) -> usize {
        self.addresses.len()
            + self.domains.len()
            + self.parents.len()
            + self.groups.len()
            + self.hierarchies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add(&mut self, pattern: &str) -> Result<(), String> {
        let lower = pattern.to_lowercase();
        if let Some(group) = strip_prefix_ignore_case(pattern, "newsgroup:") {
            let group = group.to_ascii_lowercase();
            if let Some(hierarchy) = group.strip_suffix(".*") {
                check_group(hierarchy)?;
                self.hierarchies.insert(hierarchy.to_string());
            } else {
                check_group(&group)?;
                self.groups.insert(group);
            }
            return Ok(());
        }
        if pattern.contains('@') {
            let mailbox =
                parse_mailbox(pattern, true).map_err(|e| format!("not an address: {e}"))?;
            let domain = service_domain(mailbox.domain_str());
            self.addresses
                .insert(format!("{}@{domain}", mailbox.local.to_lowercase()));
            return Ok(());
        }
        if let Some(parent) = lower.strip_prefix('.') {
            parse_domain(parent, true).map_err(|e| format!("not a .domain: {e}"))?;
            if parent.ends_with(".onion") {
                return Err(format!(
                    "an onion service has no subdomains of its own (Tor ignores labels in front of its name): write {} to block it",
                    service_domain(parent)
                ));
            }
            self.parents.insert(parent.to_string());
            return Ok(());
        }
        parse_domain(&lower, true).map_err(|e| {
            format!(
                "not a domain: {e} (patterns are user@domain, domain, .domain or newsgroup:name)"
            )
        })?;
        self.domains.insert(service_domain(&lower).to_string());
        Ok(())
    }

    /// True if mail to `recipient` (`local@domain` as in the envelope)
    /// must not leave here.
    pub fn blocks(&self, recipient: &str) -> bool {
        let Some((local, domain)) = recipient.rsplit_once('@') else {
            return false;
        };
        let local = local.to_lowercase();
        let domain = domain.to_lowercase();
        let domain = domain.strip_suffix('.').unwrap_or(&domain);
        let service = service_domain(domain);
        if self.domains.contains(service)
            || self.addresses.contains(&format!("{local}@{service}"))
            || self.blocks_group(&local)
        {
            return true;
        }
        // Every proper parent: a.b.example.org → b.example.org, example.org, org.
        let mut rest = domain;
        while let Some((_, parent)) = rest.split_once('.') {
            if self.parents.contains(parent) {
                return true;
            }
            rest = parent;
        }
        false
    }

    /// True if the message's `Newsgroups:` header names a blocked group.
    pub fn blocks_post(&self, message: &[u8]) -> bool {
        if self.groups.is_empty() && self.hierarchies.is_empty() {
            return false;
        }
        // Folded values are split at commas and trimmed, so a fold between
        // groups (CRLF and whitespace) falls away with the trim.
        header::fields(message)
            .filter(|f| f.has_name("newsgroups"))
            .any(|f| {
                String::from_utf8_lossy(f.value)
                    .split(',')
                    .map(|g| g.trim().to_ascii_lowercase())
                    .any(|g| self.blocks_group(&g))
            })
    }

    fn blocks_group(&self, group: &str) -> bool {
        if self.groups.contains(group) {
            return true;
        }
        let mut rest = group;
        while let Some((parent, _)) = rest.rsplit_once('.') {
            if self.hierarchies.contains(parent) {
                return true;
            }
            rest = parent;
        }
        false
    }
}

/// A line without its comment: `#` at the start, or after whitespace (a
/// `#` inside a quoted local part stays).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// An onion domain reduced to its service name (`mail.<name>.onion` →
/// `<name>.onion`); any other domain unchanged.
fn service_domain(domain: &str) -> &str {
    if !domain.ends_with(".onion") {
        return domain;
    }
    let labels: Vec<usize> = domain.match_indices('.').map(|(i, _)| i).collect();
    match labels.len() {
        0 | 1 => domain,
        n => &domain[labels[n - 2] + 1..],
    }
}

/// Newsgroup names (RFC 5536 §3.1.4): dot-separated components of letters,
/// digits, `+`, `-` and `_`.
fn check_group(group: &str) -> Result<(), String> {
    let ok = !group.is_empty()
        && group.split('.').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-_".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "newsgroup:{group} is not a newsgroup name (e.g. newsgroup:alt.test or newsgroup:alt.test.*)"
        ))
    }
}

/// The current block list, shared by every session and (at a mixnet exit)
/// the exit; [`DestBlock::replace`] swaps it on reload. A session that has
/// already passed RCPT keeps its recipients: a reload only affects checks
/// made after it.
#[derive(Debug, Default)]
pub struct DestBlock {
    /// An `RwLock` around an `Arc`: readers hold the lock only to clone the
    /// pointer, so a reload never waits for a check and a check never sees
    /// half a list.
    list: RwLock<Arc<BlockList>>,
    stats: Arc<Stats>,
}

impl DestBlock {
    pub fn new(list: BlockList, stats: Arc<Stats>) -> Self {
        Self {
            list: RwLock::new(Arc::new(list)),
            stats,
        }
    }

    pub fn current(&self) -> Arc<BlockList> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, list: BlockList) {
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(list);
    }

    /// True if mail to `recipient` must not leave here; counted when it is
    /// refused. The mixnet exit calls this for each recipient of a
    /// completed message and drops those it blocks.
    pub fn blocks(&self, recipient: &str) -> bool {
        let blocked = self.current().blocks(recipient);
        if blocked {
            self.count(Some(recipient));
        }
        blocked
    }

    /// True if the message is a post to a blocked newsgroup; counted.
    pub fn blocks_post(&self, message: &[u8]) -> bool {
        let blocked = self.current().blocks_post(message);
        if blocked {
            self.count(None);
        }
        blocked
    }

    /// Counts a refusal and logs it; the recipient only with `-debug`,
    /// and never which pattern matched.
    fn count(&self, recipient: Option<&str>) {
        self.stats.dest_blocked.inc();
        match recipient {
            Some(to) => info!(
                "[POLICY] refused a recipient on the -dest-block list: {}",
                Sensitive(to)
            ),
            None => info!("[POLICY] refused a post to a newsgroup on the -dest-block list"),
        }
    }
}

impl RecipientCheck for DestBlock {
    fn refuses(&self, recipient: &str) -> bool {
        self.blocks(recipient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> BlockList {
        BlockList::parse(text).unwrap()
    }

    #[test]
    fn it_matches_recipient_patterns_like_dest_block_lines_but_refuses_groups() {
        let p = RecipientPatterns::parse(["mail2news@GW.example", "news.example", ".hub.example"])
            .unwrap();
        for yes in ["Mail2News@gw.example", "x@news.example", "x@a.hub.example"] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in [
            "other@gw.example",
            "x@sub.news.example",
            "x@hub.example",
            "alt.test@gw.example",
        ] {
            assert!(!p.matches(no), "{no}");
        }
        assert!(!RecipientPatterns::default().matches("x@news.example"));
        for bad in ["newsgroup:alt.test", "", "a b", "not@@valid"] {
            assert!(RecipientPatterns::parse([bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn it_blocks_addresses_without_regard_to_case() {
        let l = list("Victim@Example.org\n");
        assert!(l.blocks("victim@example.org"));
        assert!(l.blocks("VICTIM@EXAMPLE.ORG"));
        assert!(!l.blocks("other@example.org"));
        assert!(!l.blocks("victim@example.net"));
        assert!(!l.blocks("victim@sub.example.org"));
    }

    #[test]
    fn it_blocks_a_domain_but_not_its_subdomains() {
        let l = list("example.org");
        assert!(l.blocks("anyone@example.org"));
        assert!(l.blocks("anyone@EXAMPLE.org"));
        assert!(!l.blocks("anyone@mail.example.org"));
        assert!(!l.blocks("anyone@notexample.org"));
    }

    #[test]
    fn it_blocks_subdomains_with_a_leading_dot_but_not_the_domain() {
        let l = list(".example.org");
        assert!(l.blocks("a@mail.example.org"));
        assert!(l.blocks("a@x.y.example.org"));
        assert!(!l.blocks("a@example.org"));
        assert!(!l.blocks("a@badexample.org"));
    }

    #[test]
    fn it_treats_an_onion_with_labels_in_front_as_the_same_service() {
        let name = crate::address::OnionName::from_seed(4).to_string();
        let l = list(&name);
        assert!(l.blocks(&format!("a@{name}")));
        assert!(l.blocks(&format!("a@mail.{name}")));
        let l = list(&format!("bob@{name}"));
        assert!(l.blocks(&format!("bob@mail.{name}")));
        assert!(!l.blocks(&format!("alice@{name}")));
        let e = BlockList::parse(&format!(".{name}")).unwrap_err();
        assert!(e.reason.contains("no subdomains"), "{e}");
    }

    #[test]
    fn it_blocks_newsgroups_by_header_and_by_gateway_address() {
        let l = list("newsgroup:alt.test\nnewsgroup:alt.binaries.*\n");
        assert!(l.blocks_post(b"Newsgroups: misc.misc, Alt.Test\r\nSubject: x\r\n\r\nbody"));
        assert!(l.blocks_post(b"Newsgroups: alt.binaries.pictures\r\n\r\nbody"));
        assert!(!l.blocks_post(b"Newsgroups: alt.binaries\r\n\r\n"));
        assert!(!l.blocks_post(b"Newsgroups: alt.testing\r\n\r\n"));
        assert!(!l.blocks_post(b"Subject: alt.test\r\n\r\nNewsgroups: alt.test\r\n"));
        assert!(l.blocks("alt.test@mail2news.example"));
        assert!(l.blocks("alt.binaries.x@mail2news.example"));
        assert!(!l.blocks("mail2news@mail2news.example"));
    }

    #[test]
    fn it_skips_comments_and_blank_lines() {
        let l = list("# who asked\n\n   \nexample.org   # since 2024\n#example.net\n");
        assert_eq!(l.len(), 1);
        assert!(!l.blocks("a@example.net"));
        assert!(BlockList::parse("").unwrap().is_empty());
    }

    #[test]
    fn it_names_the_line_of_a_bad_pattern() {
        for (text, line) in [
            ("example.org\nnot a pattern\n", 2),
            ("# c\n\nlocalhost\n", 3),
            ("newsgroup:alt..test", 1),
            ("ok.example\n.\n", 2),
            ("a@[192.0.2.1]", 1),
            ("@example.org", 1),
        ] {
            let e = BlockList::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
        }
    }

    #[test]
    fn it_counts_what_it_refuses() {
        let stats = Arc::new(Stats::default());
        let d = DestBlock::new(list("example.org"), stats.clone());
        assert!(d.blocks("a@example.org"));
        assert!(!d.blocks("a@example.net"));
        assert_eq!(Stats::get(&stats.dest_blocked), 1);
        d.replace(list("example.net"));
        assert!(!d.blocks("a@example.org"));
        assert!(d.blocks("a@example.net"));
        assert_eq!(Stats::get(&stats.dest_blocked), 2);
    }
}
