//! Two fields cannot read the same column.

use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(table = "users")]
pub struct User {
    #[cached(pk)]
    pub id: i64,
    #[cached(column = "id")]
    pub also_id: i64,
    pub name: String,
    #[cached(rename = "display", column = "name")]
    pub display_name: String,
    // Lists and skipped fields are not columns: no clash.
    #[cached(skip)]
    pub scratch: u8,
}

fn main() {}
