//! "Did you mean" hints for misspelled attribute names.

/// Names people reach for from other ORMs and serde, mapped to ours. Edit
/// distance alone cannot get from `primary_key` to `pk`.
const ALIASES: &[(&str, &str)] = &[
    ("primary_key", "pk"),
    ("primarykey", "pk"),
    ("primary", "pk"),
    ("id", "pk"),
    ("key", "pk"),
    ("foreign_key", "references"),
    ("fk", "references"),
    ("belongs_to", "references"),
    ("reference", "references"),
    ("refs", "references"),
    ("one_to_many", "has_many"),
    ("many", "has_many"),
    ("m2m", "many_to_many"),
    ("has_and_belongs_to_many", "many_to_many"),
    ("through", "via"),
    ("related_name", "inverse"),
    ("back_populates", "inverse"),
    ("ignore", "skip"),
    ("transient", "skip"),
    ("skip_serializing", "skip"),
    ("alias", "rename"),
    ("json", "rename"),
    ("with", "serde"),
    ("table", "model"),
    ("model_name", "model"),
    ("expire", "ttl"),
    ("expiry", "ttl"),
    ("expires", "ttl"),
    ("timeout", "ttl"),
    ("invalidates", "invalidates_key"),
    ("invalidate_key", "invalidates_key"),
    ("invalidate", "invalidator"),
];

/// The known name the user most likely meant by `unknown`, if any is close.
pub(crate) fn closest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = unknown.to_ascii_lowercase();
    if let Some(name) = known.iter().find(|name| **name == lower) {
        return Some(name);
    }
    for (alias, target) in ALIASES {
        if *alias == lower
            && let Some(name) = known.iter().find(|name| *name == target)
        {
            return Some(name);
        }
    }
    // Short names tolerate fewer edits, or `pk` would match every two-letter
    // word.
    let budget = match lower.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    known
        .iter()
        .map(|name| (distance(&lower, name), *name))
        .filter(|(d, _)| *d <= budget)
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// Optimal string alignment distance: Levenshtein plus adjacent
/// transpositions, so `modle` is one edit from `model`.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, row) in d.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &[&str] = &[
        "pk",
        "references",
        "has_many",
        "via",
        "many_to_many",
        "inverse",
        "skip",
        "rename",
        "serde",
    ];

    #[test]
    fn transpositions_and_typos() {
        assert_eq!(closest("modle", &["model", "version"]), Some("model"));
        assert_eq!(closest("refrences", FIELD), Some("references"));
        assert_eq!(closest("hasmany", FIELD), Some("has_many"));
        assert_eq!(closest("pkk", FIELD), Some("pk"));
        assert_eq!(closest("Skip", FIELD), Some("skip"));
    }

    #[test]
    fn aliases() {
        assert_eq!(closest("primary_key", FIELD), Some("pk"));
        assert_eq!(closest("foreign_key", FIELD), Some("references"));
        assert_eq!(closest("table", &["model", "version"]), Some("model"));
        // An alias only counts when its target is valid here.
        assert_eq!(closest("table", FIELD), None);
    }

    #[test]
    fn unrelated_names_get_no_hint() {
        assert_eq!(closest("xyz", FIELD), None);
        assert_eq!(closest("flatten", FIELD), None);
        assert_eq!(closest("", FIELD), None);
    }

    #[test]
    fn distance_basics() {
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("ab", "ba"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
