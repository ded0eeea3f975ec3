//! The table: a row per comparison, with its ratio and whether it met its budget.

#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// Stable id, for the spread across runs.
    pub(crate) key: &'static str,
    pub(crate) what: String,
    pub(crate) ours: String,
    pub(crate) base: String,
    /// The figure the target is about, e.g. "ours/base = 1.04".
    pub(crate) ratio: String,
    /// Its value, for the spread.
    pub(crate) metric: Option<f64>,
    pub(crate) target: String,
    pub(crate) met: Option<bool>,
}

pub(crate) fn ratio_row(
    key: &'static str,
    what: impl Into<String>,
    ours: String,
    base: String,
    (label, value): (&str, f64),
    target: (&str, f64),
) -> Row {
    let (op, bound) = target;
    let met = match op {
        "<=" => value <= bound,
        _ => value >= bound,
    };
    Row {
        key,
        what: what.into(),
        ours,
        base,
        ratio: format!("{label} = {value:.2}"),
        metric: Some(value),
        target: format!("{label} {} {bound}", if op == "<=" { "≤" } else { "≥" }),
        met: Some(met),
    }
}

pub(crate) fn print_table(rows: &[Row]) {
    println!("| row | ours | baseline | ratio | target | met? |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.what, r.ours, r.base, r.ratio, r.target, met
        );
    }
}
