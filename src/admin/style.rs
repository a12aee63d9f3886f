//! The page's look: one style sheet in the page (no file to load, no
//! script) that reads on a desktop and at 390 px on a phone with no
//! sideways scrolling. On a narrow screen each list table turns into a
//! card per row, every cell labelled with its column's name; the names
//! come from the same [`Columns`] that write the table's head, so the two
//! cannot drift.

use std::sync::OnceLock;

/// A list table's kind (its CSS class) and its columns.
pub struct Columns {
    class: &'static str,
    names: &'static [&'static str],
}

impl Columns {
    /// The table's opening tag and head row, with `id` if given.
    pub fn head(&self, id: Option<&str>) -> String {
        let id = id.map(|id| format!(" id={id}")).unwrap_or_default();
        let names: String = self
            .names
            .iter()
            .map(|name| format!("<th>{name}</th>"))
            .collect();
        format!("<table class=\"list {}\"{id}><tr>{names}</tr>", self.class)
    }
}

pub const SUBSCRIPTIONS: Columns = Columns {
    class: "subscriptions",
    names: &["name", "target", "sources", "events", "deliveries"],
};
pub const SOURCES: Columns = Columns {
    class: "sources",
    names: &["source", "stored", "quarantined", "last received"],
};
pub const NOTIFICATIONS: Columns = Columns {
    class: "notifications",
    names: &["id", "received", "source", "event", "invoice", "deliveries"],
};
pub const QUARANTINE: Columns = Columns {
    class: "quarantine",
    names: &["id", "received", "source", "reason"],
};
pub const STUCK: Columns = Columns {
    class: "stuck",
    names: &["source", "invoice", "queued since"],
};
pub const ATTEMPTS: Columns = Columns {
    class: "attempts",
    names: &["attempt", "started", "took", "outcome", "answer"],
};
pub const INVOICES: Columns = Columns {
    class: "invoices",
    names: &["source", "invoice", "status", "latest"],
};
pub const TIMELINE: Columns = Columns {
    class: "timeline",
    names: &[
        "received",
        "notification",
        "event",
        "status",
        "resends",
        "deliveries",
    ],
};

const TABLES: [&Columns; 8] = [
    &SUBSCRIPTIONS,
    &SOURCES,
    &NOTIFICATIONS,
    &QUARANTINE,
    &STUCK,
    &ATTEMPTS,
    &INVOICES,
    &TIMELINE,
];

const BASE: &str = "*{box-sizing:border-box}\
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;padding:.8em 1.2em;max-width:80em;color:#222}\
h1{font-size:1.4em;margin:.2em 0}h1 a{color:inherit;text-decoration:none}\
h2{font-size:1.15em;margin:1.3em 0 .4em}h3{font-size:1em;margin:1em 0 .3em}\
table{border-collapse:collapse;margin:.5em 0 1.5em;max-width:100%}\
td,th{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top;overflow-wrap:anywhere}\
th{background:#f4f4f4;font-weight:600}\
.dead{color:#b00;font-weight:600}.delivered{color:#070}.waiting{color:#a60}\
pre{background:#f7f7f7;padding:1em;overflow:auto;max-height:30em;white-space:pre-wrap;overflow-wrap:anywhere}\
code{overflow-wrap:anywhere}form{margin:.3em 0}form.inline{display:inline}\
header{display:flex;flex-wrap:wrap;gap:.2em 1.5em;align-items:baseline}.muted{color:#666}\
label{display:inline-block;margin:.15em .6em .15em 0}input,select,button{font:inherit;max-width:100%}\
.flag{display:inline-block;background:#fff3cd;color:#6b4e00;border-radius:.3em;padding:0 .4em;font-size:.85em;margin:.1em .2em 0 0}\
.note,.problem{padding:.5em .8em;margin:.6em 0}.note{background:#eef4ff;border-left:4px solid #5b8def}\
.problem{background:#fdecea;border-left:4px solid #b00}\
figure{margin:.5em 0 1.5em;max-width:46em}figcaption,.caption{margin:.3em 0}\
figure svg{display:block;width:100%;height:4.5em;background:#fafafa}\
rect.received{fill:#3b6fd8}rect.delivered{fill:#2a9d4b}rect.waiting{fill:#d08a1a}\
.key-received{color:#3b6fd8}.key-delivered{color:#2a9d4b}.key-waiting{color:#d08a1a}\
.axis{display:flex;justify-content:space-between;color:#666;font-size:.85em}";

/// Below this width a list table is a card per row (a line per cell;
/// where the values are short, the cells run on in one paragraph).
const NARROW: &str = "@media (max-width:40em){\
body{padding:.5em .7em;font-size:14px}\
table.list,table.list tbody,table.list tr,table.list td{display:block;width:100%}\
table.list tr:first-child{display:none}\
table.list tr{border:1px solid #ddd;border-radius:.4em;margin:.5em 0;padding:.3em 0}\
table.list td{border:0;padding:.1em .6em}\
table.list td::before{font-weight:600;color:#555;margin-right:.5em}\
table.attempts td,table.sources td{display:inline-block;width:auto}";

/// The style sheet, made once.
pub fn sheet() -> &'static str {
    static SHEET: OnceLock<String> = OnceLock::new();
    SHEET.get_or_init(|| {
        let mut sheet = format!("{BASE}{NARROW}");
        for table in TABLES {
            for (n, name) in (1..).zip(table.names) {
                sheet.push_str(&format!(
                    "table.{} td:nth-child({n})::before{{content:\"{name}\"}}",
                    table.class
                ));
            }
        }
        sheet.push('}');
        sheet
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_is_labelled_on_a_narrow_screen() {
        let sheet = sheet();
        assert!(sheet.contains("table.attempts td:nth-child(5)::before{content:\"answer\"}"));
        assert!(sheet.ends_with("}}"), "the media query is closed");
        assert_eq!(
            ATTEMPTS.head(Some("a")),
            "<table class=\"list attempts\" id=a><tr><th>attempt</th><th>started</th><th>took</th><th>outcome</th><th>answer</th></tr>"
        );
    }
}
