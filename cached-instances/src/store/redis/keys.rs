//! Keys under the store's key prefix, written into commands without
//! building the prefixed strings: a list's multi-get or a cold batch's
//! lease names a hundred keys, and a string for each was a tenth of a
//! listing's CPU (its allocation, copy and free). A prefixed key is spelled
//! out only where a string is needed: a cluster's hash slot, the near
//! tier.

use std::borrow::Cow;
use std::io::Write;

use redis::{RedisWrite, ToRedisArgs};

/// `key` under `prefix` (borrowed when there is none).
pub(super) fn prefixed<'k>(prefix: &str, key: &'k str) -> Cow<'k, str> {
    if prefix.is_empty() {
        Cow::Borrowed(key)
    } else {
        let mut full = String::with_capacity(prefix.len() + key.len());
        full.push_str(prefix);
        full.push_str(key);
        Cow::Owned(full)
    }
}

/// `keys`, each under `prefix`.
#[derive(Clone, Copy)]
pub(super) struct Keys<'a> {
    prefix: &'a str,
    keys: &'a [String],
}

impl<'a> Keys<'a> {
    pub(super) fn new(prefix: &'a str, keys: &'a [String]) -> Self {
        Keys { prefix, keys }
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Key `i`, as one command argument.
    pub(super) fn arg(&self, i: usize) -> Prefixed<'a> {
        Prefixed {
            prefix: self.prefix,
            key: &self.keys[i],
        }
    }

    /// Key `i`, spelled out (borrowed when there is no prefix).
    pub(super) fn full(&self, i: usize) -> Cow<'a, str> {
        prefixed(self.prefix, &self.keys[i])
    }

    /// The bytes of the command arguments of `group`'s keys: what a
    /// command naming them reserves up front.
    pub(super) fn size_of(&self, group: &[usize]) -> usize {
        group
            .iter()
            .map(|&i| self.prefix.len() + self.keys[i].len())
            .sum()
    }

    /// The bytes of the command arguments of every key.
    pub(super) fn total_size(&self) -> usize {
        self.keys.len() * self.prefix.len() + self.keys.iter().map(String::len).sum::<usize>()
    }
}

/// One key under a prefix, written as a single argument.
pub(super) struct Prefixed<'a> {
    prefix: &'a str,
    key: &'a str,
}

impl ToRedisArgs for Prefixed<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        let mut arg = out.writer_for_next_arg();
        // Into the command's own buffer: these writes cannot fail.
        let _ = arg.write_all(self.prefix.as_bytes());
        let _ = arg.write_all(self.key.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefixed_key_is_one_argument() {
        let keys = vec![
            "polls.question:1".to_owned(),
            "polls.question:22".to_owned(),
        ];
        let keys = Keys::new("app:", &keys);
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys.arg(0)).arg(keys.arg(1));
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(
            args,
            [
                &b"MGET"[..],
                b"app:polls.question:1",
                b"app:polls.question:22"
            ]
        );
        assert_eq!(keys.full(1), "app:polls.question:22");
        assert_eq!(keys.size_of(&[0, 1]), 4 + 16 + 4 + 17);
        let bare = ["k".to_owned()];
        assert!(matches!(Keys::new("", &bare).full(0), Cow::Borrowed("k")));
    }
}
