//! Manual pages, rendered as roff from what they document: ferrio(8) from the command line
//! parser's own definitions, ferrio.toml(5) from [`CONFIG_KEYS`] and the defaults in the code,
//! the same table `ferrio config` prints its comments from. Pure: text in, text out; the Debian
//! package installs what `ferrio man <page>` prints.

use crate::config::{key_default, KeyKind, CONFIG_KEYS, DEFAULT_CONFIG_FILE, DEFAULT_DROPIN_DIR};

/// `text` made safe for a roff text line: backslashes and hyphens escaped (a hyphen in an
/// option or path is a minus sign in man pages), a leading control character neutralised.
pub fn escape(text: &str) -> String {
    let mut out = text.replace('\\', "\\e").replace('-', "\\-");
    if out.starts_with(['.', '\'']) {
        out.insert_str(0, "\\&");
    }
    out
}

/// The `.TH` line and the NAME section every page starts with.
fn header(name: &str, section: u8, version: &str, manual: &str, summary: &str) -> String {
    format!(
        // No hyphenation and a ragged right margin: paths and key names stay whole.
        ".TH \"{}\" \"{section}\" \"\" \"ferrio {version}\" \"{manual}\"\n.nh\n.ad l\n.SH NAME\n{} \\- {}\n",
        name.to_uppercase(),
        escape(name),
        escape(summary)
    )
}

/// Paragraphs separated by blank lines, each a `.PP` of one text line.
fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| {
            format!(
                ".PP\n{}\n",
                escape(&p.split_whitespace().collect::<Vec<_>>().join(" "))
            )
        })
        .collect()
}

/// Lines shown as written (an example block).
fn example(text: &str) -> String {
    let mut out = String::from(".PP\n.RS 4\n.EX\n");
    for line in text.lines() {
        out.push_str(&escape(line));
        out.push('\n');
    }
    out.push_str(".EE\n.RE\n");
    out
}

const CONFIG_DESCRIPTION: &str = "\
ferrio(8) reads its configuration from FILE, or the file given with --config, then the drop-ins \
in DIR (or --config-dir) whose names end in .toml, in lexical order. A later file wins key by \
key: tables merge, arrays are replaced. Every key is optional; with no file at all the defaults \
below serve. Names follow CRI-O's where CRI-O has one.

An unknown key, a value of the wrong type or an invalid value makes ferrio refuse to start, with \
one line naming the file, the key and the reason. The command \"ferrio config\" prints the \
effective configuration with the descriptions below as comments.

SIGHUP (systemctl reload ferrio) re-reads the files and applies what running pods do not depend \
on: the log level, images and registries, runtime handlers, the CNI network dir, default network \
and plugin timeout, NRI's plugin and config dirs, timeouts and disable_connections; NRI plugins \
newly installed in plugin_path are started. The rest (paths of state and sockets, the cgroup \
driver, the monitor, the streaming and metrics servers, the CNI plugin dirs, NRI's enable and \
socket_path) keeps its value until a restart, and the log \
names the keys that wait for one. A new config that does not validate is refused and the old one \
stays in force.";

const CONFIG_EXAMPLE: &str = "\
# /etc/ferrio/ferrio.d/10-mirror.toml: pull docker.io images through a local mirror,
# falling back to Docker Hub.
[[image.registry]]
prefix = \"docker.io\"
fallback = true
[[image.registry.mirror]]
location = \"127.0.0.1:5000\"
insecure = true";

/// ferrio.toml(5): every table and key of [`CONFIG_KEYS`] with its default and meaning.
pub fn config_page(version: &str) -> String {
    let mut out = header(
        "ferrio.toml",
        5,
        version,
        "File Formats",
        "configuration of the ferrio CRI runtime",
    );
    out.push_str(&format!(
        ".SH SYNOPSIS\n{}\n.br\n{}/*.toml\n.SH DESCRIPTION\n",
        escape(DEFAULT_CONFIG_FILE),
        escape(DEFAULT_DROPIN_DIR)
    ));
    out.push_str(&paragraphs(
        &CONFIG_DESCRIPTION
            .replace("FILE", DEFAULT_CONFIG_FILE)
            .replace("DIR", DEFAULT_DROPIN_DIR),
    ));
    out.push_str(".SH KEYS\n");
    for k in CONFIG_KEYS {
        match k.kind {
            KeyKind::Table | KeyKind::TableArray => {
                let (open, close) = if k.kind == KeyKind::Table {
                    ("[", "]")
                } else {
                    ("[[", "]]")
                };
                out.push_str(&format!(".SS \"{open}{}{close}\"\n", escape(k.path)));
                out.push_str(&paragraphs(k.doc));
                if let Some(defaults) = named_table_defaults(k.path) {
                    out.push_str(".PP\nDefault:\n");
                    out.push_str(&example(defaults.trim_end()));
                }
            }
            KeyKind::Value | KeyKind::Required => {
                let default = match (k.kind, key_default(k.path)) {
                    (KeyKind::Required, _) => "required".to_string(),
                    (_, Some(v)) => format!("default {v}"),
                    (_, None) => "unset by default".to_string(),
                };
                out.push_str(&format!(
                    ".TP\n\\fB{}\\fR ({})\n{}\n",
                    escape(k.path),
                    escape(&default),
                    escape(k.doc)
                ));
            }
        }
    }
    out.push_str(".SH EXAMPLE\n");
    out.push_str(&example(CONFIG_EXAMPLE));
    out.push_str(&format!(
        ".SH FILES\n.TP\n{}\nThe main configuration file.\n.TP\n{}\nDrop-ins, applied in lexical order.\n",
        escape(DEFAULT_CONFIG_FILE),
        escape(DEFAULT_DROPIN_DIR)
    ));
    out.push_str(".SH SEE ALSO\n\\fBferrio\\fR(8)\n");
    out
}

/// For the table of a named entry (`runtime.runtimes.<handler>`): the entries the defaults
/// hold, as TOML under their full header.
fn named_table_defaults(path: &str) -> Option<String> {
    let parent = path.strip_suffix(">")?.rsplit_once(".<")?.0;
    let mut value = key_default(parent)?;
    for segment in parent.rsplit('.') {
        let mut t = toml::Table::new();
        t.insert(segment.to_string(), value);
        value = toml::Value::Table(t);
    }
    toml::to_string(&value).ok()
}

const COMMAND_SIGNALS: &str = "\
SIGHUP re-reads the configuration files (see ferrio.toml(5) for what a reload applies).

SIGTERM and SIGINT stop serving and exit; requests in flight get a few seconds to finish. \
Containers keep running: each is supervised by its own ferrio-monitor, and the next ferrio finds \
them again from its state on disk.";

const COMMAND_SYSTEMD: &str = "\
Under systemd (ferrio.service, Type=notify) ferrio sends READY=1 once recovery is done and the \
socket serves, so \"systemctl start ferrio\" returns when kubelet can connect. The unit has \
KillMode=process: a stop or restart signals only the daemon, never the monitors and containers.";

/// ferrio(8): the command line as `cmd` defines it (visible options and subcommands, with their
/// help and defaults), and how the daemon behaves.
pub fn command_page(cmd: &clap::Command, version: &str) -> String {
    let mut cmd = cmd.clone();
    cmd.build();
    let name = cmd.get_name().to_string();
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    let mut out = header(&name, 8, version, "System Administration", &about);
    let subcommands: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    out.push_str(&format!(
        ".SH SYNOPSIS\n\\fB{}\\fR [\\fIOPTIONS\\fR]\n",
        escape(&name)
    ));
    for s in &subcommands {
        out.push_str(&format!(
            ".br\n\\fB{}\\fR [\\fIOPTIONS\\fR] \\fB{}\\fR\n",
            escape(&name),
            escape(s.get_name())
        ));
    }
    out.push_str(".SH DESCRIPTION\n");
    let description = cmd
        .get_long_about()
        .map(|a| a.to_string())
        .unwrap_or_else(|| about.clone());
    out.push_str(&paragraphs(&description));
    out.push_str(".SH OPTIONS\n");
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let mut tag = Vec::new();
        if let Some(short) = arg.get_short() {
            tag.push(format!("\\fB\\-{}\\fR", escape(&short.to_string())));
        }
        if let Some(long) = arg.get_long() {
            tag.push(format!("\\fB\\-\\-{}\\fR", escape(long)));
        }
        let mut tag = tag.join(", ");
        if arg.get_action().takes_values() {
            let value_name = arg
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| v.to_string())
                .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
            tag.push_str(&format!(" \\fI{}\\fR", escape(&value_name)));
        }
        let mut help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        // clap drops the final period of a one-line doc comment; the page puts sentences after it.
        if !help.is_empty() && !help.ends_with(['.', ')']) {
            help.push('.');
        }
        if !defaults.is_empty() {
            help.push_str(&format!(" Default: {}.", defaults.join(", ")));
        }
        out.push_str(&format!(".TP\n{tag}\n{}\n", escape(help.trim())));
    }
    if !subcommands.is_empty() {
        out.push_str(".SH COMMANDS\n");
        for s in &subcommands {
            let help = s
                .get_long_about()
                .or_else(|| s.get_about())
                .map(|h| h.to_string())
                .unwrap_or_default();
            out.push_str(&format!(
                ".TP\n\\fB{}\\fR\n{}\n",
                escape(s.get_name()),
                escape(help.trim())
            ));
        }
    }
    out.push_str(".SH SIGNALS\n");
    out.push_str(&paragraphs(COMMAND_SIGNALS));
    out.push_str(".SH SYSTEMD\n");
    out.push_str(&paragraphs(COMMAND_SYSTEMD));
    out.push_str(&format!(
        ".SH FILES\n.TP\n{}\nThe configuration (see \\fBferrio.toml\\fR(5)).\n.TP\n{}\nConfiguration drop-ins.\n",
        escape(DEFAULT_CONFIG_FILE),
        escape(DEFAULT_DROPIN_DIR)
    ));
    out.push_str(".SH SEE ALSO\n\\fBferrio.toml\\fR(5), \\fBrunc\\fR(8), \\fBcrun\\fR(1)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{config_key_paths, KeyKind};

    #[test]
    fn every_config_key_appears_in_the_config_page() {
        let page = config_page("0.0.0");
        for (path, kind) in config_key_paths() {
            let tag = match kind {
                KeyKind::Table => format!(".SS \"[{}]\"", escape(&path)),
                KeyKind::TableArray => format!(".SS \"[[{}]]\"", escape(&path)),
                KeyKind::Value | KeyKind::Required => format!("\\fB{}\\fR (", escape(&path)),
            };
            assert!(page.contains(&tag), "{path} is missing from ferrio.toml(5)");
        }
    }

    #[test]
    fn config_page_shows_defaults_from_the_code() {
        let page = config_page("1.2.3");
        assert!(page.starts_with(".TH \"FERRIO.TOML\" \"5\" \"\" \"ferrio 1.2.3\""));
        assert!(page.contains("\\fBapi.listen\\fR (default \"/run/ferrio/ferrio.sock\")"));
        assert!(page.contains("\\fBimage.registry.prefix\\fR (required)"));
        assert!(page.contains("\\fBimage.registry.mirror.pull_from_mirror\\fR (default \"all\")"));
        assert!(
            page.contains("\\fBruntime.runtimes.<handler>.cgroup_v1_view\\fR (unset by default)")
        );
        // The default handlers, under their full table header.
        assert!(page.contains("[runtime.runtimes.crun]\nruntime_path = \"/usr/bin/crun\""));
    }

    #[test]
    fn escape_keeps_roff_control_characters_out_of_text() {
        assert_eq!(escape(".hidden"), "\\&.hidden");
        assert_eq!(escape("'quoted"), "\\&'quoted");
        assert_eq!(escape("a\\b --x"), "a\\eb \\-\\-x");
    }

    #[test]
    fn command_page_lists_visible_options_and_subcommands() {
        let cmd = clap::Command::new("tool")
            .about("Does things")
            .arg(
                clap::Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .help("The file."),
            )
            .arg(
                clap::Arg::new("dir")
                    .long("dir")
                    .default_value("/etc/x")
                    .help("A dir."),
            )
            .arg(clap::Arg::new("secret").long("secret").hide(true))
            .subcommand(clap::Command::new("show").about("Show it."))
            .subcommand(clap::Command::new("internal").hide(true));
        let page = command_page(&cmd, "1.0");
        assert!(page.contains("tool \\- Does things"));
        assert!(page.contains(".TP\n\\fB\\-\\-config\\fR \\fIFILE\\fR\nThe file.\n"));
        assert!(page.contains("A dir. Default: /etc/x."));
        assert!(page.contains("\\fBshow\\fR\nShow it."));
        assert!(page.contains("\\fB\\-\\-help\\fR"));
        assert!(!page.contains("secret"));
        assert!(!page.contains("internal"));
    }
}
