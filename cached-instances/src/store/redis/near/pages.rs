//! Index pages in the near tier: their tier keys and their bytes.
//!
//! A page shares the tier (and its byte bound and max age) with the
//! entries. Its tier key starts with `"\0p"`, and an entry whose Redis key
//! starts with a NUL is held under that key with one more NUL in front
//! ([`entry_slot`]), so no Redis key, however named, can reach a page's
//! slot, nor a page an entry's.
//!
//! A page's bytes carry the generation of each of the two keys it was read
//! from (the index's warm mark and its order's sorted set) as they were
//! before the read was sent: the page is served only while both are
//! unchanged (see `Near::page`).

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use crate::store::IndexPage;

/// The tier key of the entry under the Redis key `key`: the key itself,
/// unless it starts with a NUL, which is doubled so that it cannot be a
/// page's slot (`"\0p..."`).
pub(super) fn entry_slot(key: &str) -> Cow<'_, str> {
    if key.starts_with('\0') {
        Cow::Owned(format!("\0{key}"))
    } else {
        Cow::Borrowed(key)
    }
}

/// The tier key of the page at `offset` (`limit` members at most, `None`:
/// all) of the index whose warm mark is `warm`, in the order of the sorted
/// set `order`. The two keys are length-prefixed, so two different pages
/// never share a slot.
pub(in crate::store::redis) fn page_slot(
    warm: &str,
    order: &str,
    descending: bool,
    offset: u64,
    limit: Option<u64>,
) -> String {
    let limit = limit.map_or_else(|| "-".to_owned(), |l| l.to_string());
    format!(
        "\0p{}:{warm}{}:{order}{}:{offset}:{limit}",
        warm.len(),
        order.len(),
        u8::from(descending),
    )
}

/// A page as the tier holds it: the generations of its two keys, the total,
/// then each member, length-prefixed (little-endian integers).
pub(super) fn encode(stamps: [u64; 2], page: &IndexPage) -> Bytes {
    let size = 8 * 3 + 4 + page.members.iter().map(|m| 4 + m.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_u64_le(stamps[0]);
    out.put_u64_le(stamps[1]);
    out.put_u64_le(page.total);
    out.put_u32_le(u32::try_from(page.members.len()).unwrap_or(u32::MAX));
    for member in &page.members {
        out.put_u32_le(u32::try_from(member.len()).unwrap_or(u32::MAX));
        out.put_slice(member.as_bytes());
    }
    out.freeze()
}

/// The generations a page's bytes carry; `None` if they are too short.
pub(super) fn stamps(bytes: &[u8]) -> Option<[u64; 2]> {
    let mut at = 0;
    Some([u64_at(bytes, &mut at)?, u64_at(bytes, &mut at)?])
}

/// The page its bytes hold; `None` if they are not a page.
pub(super) fn decode(bytes: &[u8]) -> Option<IndexPage> {
    let mut at = 16;
    let total = u64_at(bytes, &mut at)?;
    let count = usize::try_from(u32_at(bytes, &mut at)?).ok()?;
    let mut members = Vec::with_capacity(count.min(bytes.len() / 4));
    for _ in 0..count {
        let len = usize::try_from(u32_at(bytes, &mut at)?).ok()?;
        let member = bytes.get(at..at.checked_add(len)?)?;
        at += len;
        members.push(std::str::from_utf8(member).ok()?.to_owned());
    }
    (at == bytes.len()).then(|| IndexPage::new(members, total))
}

fn u64_at(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let raw = bytes.get(*at..*at + 8)?;
    *at += 8;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let raw = bytes.get(*at..*at + 4)?;
    *at += 4;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_reads_back_with_its_stamps() {
        for members in [vec![], vec!["1".to_owned(), "é".to_owned(), String::new()]] {
            let page = IndexPage::new(members, 42);
            let bytes = encode([7, u64::MAX], &page);
            assert_eq!(stamps(&bytes), Some([7, u64::MAX]));
            assert_eq!(decode(&bytes), Some(page));
            // Cut anywhere: not a page.
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
            }
        }
    }

    #[test]
    fn entries_and_pages_never_share_a_slot() {
        let page = page_slot("p:warm", "p:all", false, 0, Some(100));
        assert!(page.starts_with("\0p"));
        // An entry named like the page is held elsewhere.
        assert_ne!(entry_slot(&page), page.as_str());
        assert_eq!(entry_slot("ci:{Question:1}:v1"), "ci:{Question:1}:v1");
        // Every part of the query names its own page.
        let pages = [
            page_slot("p:warm", "p:all", false, 0, Some(100)),
            page_slot("p:warm", "p:all", true, 0, Some(100)),
            page_slot("p:warm", "p:all", false, 1, Some(100)),
            page_slot("p:warm", "p:all", false, 0, Some(10)),
            page_slot("p:warm", "p:all", false, 0, None),
            page_slot("p:warm", "p:s:x", false, 0, Some(100)),
            page_slot("q:warm", "p:all", false, 0, Some(100)),
            page_slot("p:warm1:", "all", false, 0, Some(100)),
        ];
        let distinct: std::collections::HashSet<_> = pages.iter().collect();
        assert_eq!(distinct.len(), pages.len());
    }
}
