//! EHLO and HELO: greet, advertise extensions, reset any transaction.

use super::{Reply, Session, Step};

impl Session {
    pub(super) fn ehlo(&mut self, _client_host: &str, extended: bool) -> Step {
        // The client's claimed name is not recorded anywhere: it may identify
        // the sender, and nothing downstream needs it.
        self.greeted = true;
        self.tx = None;
        let name = &self.config.hostname;
        if !extended {
            return Step::Reply(Reply::plain(250, name.clone()));
        }
        Step::Reply(Reply::multiline(
            250,
            vec![
                name.clone(),
                "PIPELINING".into(),
                format!("SIZE {}", self.config.max_message_size),
                "8BITMIME".into(),
                "SMTPUTF8".into(),
                "ENHANCEDSTATUSCODES".into(),
            ],
        ))
    }
}
