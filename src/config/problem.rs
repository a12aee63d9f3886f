//! One thing wrong (or deprecated) in the configuration, and where: what
//! every section's reader reports, and what the errors and warnings print.

/// One thing wrong with the configuration, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}
