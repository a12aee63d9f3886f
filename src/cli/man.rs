//! The man page, made from the clap definitions (`webhook-relay man`, a
//! hidden command) so it cannot drift from the commands: the synopsis,
//! every command with its arguments and help, then the prose the
//! definitions do not hold (description, environment, exit statuses,
//! files). `doc/webhook-relay.8` is its output, checked by a test.

use std::io::Write;

use clap::CommandFactory;

use super::Cli;

/// Prints the man page on standard output.
pub fn print() -> Result<(), super::PrintError> {
    let mut page = Vec::new();
    render(&mut page).map_err(super::PrintError)?;
    std::io::stdout()
        .lock()
        .write_all(&page)
        .map_err(super::PrintError)
}

/// The whole page, in roff.
pub fn render(out: &mut dyn Write) -> std::io::Result<()> {
    let mut command = Cli::command();
    // Built, so each argument knows whether it takes a value.
    command.build();
    let man = clap_mangen::Man::new(command.clone())
        .section("8")
        .manual("System Administration");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    writeln!(out, ".SH DESCRIPTION")?;
    out.write_all(DESCRIPTION.as_bytes())?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
        commands(out, &format!("webhook-relay {}", sub.get_name()), sub)?;
    }
    out.write_all(PROSE.as_bytes())?;
    Ok(())
}

/// One command (or, for a group, each of its commands): its synopsis, its
/// help, its arguments.
fn commands(out: &mut dyn Write, path: &str, command: &clap::Command) -> std::io::Result<()> {
    if command.has_subcommands() {
        for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
            commands(out, &format!("{path} {}", sub.get_name()), sub)?;
        }
        return Ok(());
    }
    let arguments = || {
        command
            .get_arguments()
            .filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version")
    };
    let mut synopsis = format!("\\fB{}\\fR", roff(path));
    for arg in arguments().filter(|a| a.is_positional()) {
        let _ = std::fmt::Write::write_fmt(
            &mut synopsis,
            format_args!(" \\fI{}\\fR", roff(&value_name(arg))),
        );
    }
    if arguments().any(|a| !a.is_positional()) {
        synopsis.push_str(" [\\fIOPTIONS\\fR]");
    }
    writeln!(out, ".SS {synopsis}")?;
    if let Some(about) = command.get_long_about().or(command.get_about()) {
        writeln!(out, "{}", roff(&about.to_string()))?;
    }
    for arg in arguments() {
        writeln!(out, ".TP")?;
        let mut name = match (arg.get_short(), arg.get_long()) {
            (Some(short), Some(long)) => {
                format!("\\fB\\-{short}\\fR, \\fB\\-\\-{}\\fR", roff(long))
            }
            (None, Some(long)) => format!("\\fB\\-\\-{}\\fR", roff(long)),
            (Some(short), None) => format!("\\fB\\-{short}\\fR"),
            (None, None) => String::new(),
        };
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        if arg.is_positional() {
            name = format!("\\fI{}\\fR", roff(&value_name(arg)));
        } else if takes_value {
            name.push_str(&format!(" \\fI{}\\fR", roff(&value_name(arg))));
        }
        writeln!(out, "{name}")?;
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let mut extra = Vec::new();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if takes_value && !defaults.is_empty() {
            extra.push(format!("default {}", defaults.join(",")));
        }
        if let Some(env) = arg.get_env() {
            extra.push(format!("or ${}", env.to_string_lossy()));
        }
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(" ({})", extra.join("; "))
        };
        writeln!(out, "{}", roff(&format!("{help}{extra}")))?;
    }
    Ok(())
}

/// Text made safe for roff: backslashes and hyphens escaped, and a line
/// that would begin with a control character ('.' or "'") protected.
fn roff(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = line.replace('\\', "\\e").replace('-', "\\-");
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const DESCRIPTION: &str = r#".B webhook-relay
receives webhook notifications from e-invoicing providers (TusFacturas,
D\['a]til, NubeFact, or any JSON poster), answers each one with 200 only once
it is on disk, and forwards it, signed the Standard Webhooks way, to every
internal app that subscribed to it, retrying on its own schedule.
.PP
The Debian package runs it as
.B webhook-relay.service
(user
.BR webhook-relay ,
state in
.IR /var/lib/webhook-relay )
started by
.BR webhook-relay.socket ,
which holds port 443.
Neither is enabled at installation: first replace every
.B CHANGE-ME
in
.IR /etc/webhook-relay/relay.toml .
"#;

const PROSE: &str = r#".SH REMOTE OPTIONS
The admin address and token are taken from, in this order: the flags
.BI \-\-admin\-url " URL"
.RB ( http:// \fIADDRESS\fB:\fIPORT\fR
or
.BI unix: PATH\fR)
and
.BI \-\-token\-file " FILE"\fR;
the environment
.RB ( WEBHOOK_RELAY_ADMIN_URL ,
.BR WEBHOOK_RELAY_TOKEN );
the
.B [admin]
section of the configuration file.
.SH ENVIRONMENT
.TP
.B RUST_LOG
Log filter (default
.BR info ).
.TP
.B LOG_FORMAT=json
Logs as JSON lines (the unit sets it).
.SH EXIT STATUS
.TP
.B 0
Success, or a clean stop; also a command whose output pipe its reader
closed (\fB... | head\fR), which ends quietly.
.TP
.B 64
The configuration is wrong (every problem is printed), a certificate cannot
be read, or example secrets would be served on a public address. The unit
does not restart the relay.
.TP
.B 65
The spool is damaged or lost acknowledged notifications; not restarted.
.TP
.B 75
The spool is in use by a running relay (spool commands).
.TP
.B 69
The running relay's admin API cannot be reached.
.TP
.B 77
The admin API refused the token, or its role may not do this.
.TP
.B 1
Any other failure (the unit restarts the relay).
.SH FILES
.TP
.I /etc/webhook-relay/relay.toml
The configuration (root:webhook-relay, mode 0640).
.TP
.I /var/lib/webhook-relay/spool
The spool.
.TP
.I /usr/share/doc/webhook-relay/README.md
Every configuration key, the grammar of durations and sizes, operations.
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1),
.BR systemd.socket (5)
"#;

/// What an argument's value is called: its `value_name`, else its id in
/// capitals (as `--help` shows it).
fn value_name(arg: &clap::Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map_or_else(|| arg.get_id().as_str().to_uppercase(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_on_the_page() {
        let mut page = Vec::new();
        render(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        for command in [
            "invoice show",
            "subscriptions retry",
            "spool ls",
            "gen\\-secret",
        ] {
            assert!(
                page.contains(&format!(".SS \\fBwebhook\\-relay {command}")),
                "{command}"
            );
        }
        assert!(page.contains("\\-\\-schedule"));
        assert!(!page.contains(".SS \\fBwebhook\\-relay man"), "hidden");
    }
}
