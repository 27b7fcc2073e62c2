#!/usr/bin/env bash
# test_man.sh KIM BROKER MANDIR SAMPLE_CFG AGENT AGENT_CFG — the man pages
# built from docs/man/*.scd render without a warning and hold their key
# sections, and they stay true to the programs: every option of
# `kim-broker --help` and `kim-agent --help`, every command of `kim --help`
# and every key of the two sample configurations is in its page. Skipped
# (77) when the build had no scdoc.
set -u
kim=$1 broker_bin=$2 mandir=$3 sample=$4 agent_bin=$5 agent_sample=$6
checks=0
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
[ -f "$mandir/kim-broker.8" ] || { echo "no man pages built (scdoc missing): skipped"; exit 77; }
command -v groff >/dev/null || { echo "groff missing: skipped"; exit 77; }
render() { groff -man -Tutf8 -ww -P-cbou "$mandir/$1" 2>"$mandir/$1.err"; }
for entry in "kim-broker.8:OPTIONS SIGNALS|BACKUP AND RESTORE|FILES|EXIT STATUS" \
             "kim.1:COMMANDS|CONNECTION OPTIONS|EXIT STATUS" \
             "kim.cfg.5:SECTION broker|SECTION store|SECTION orgs|SECTION metrics" \
             "kim-policy.5:FORMAT|RULE KEYS" \
             "kim-agent.8:OPTIONS|API|CONFIGURATION|SIGNALS|FILES|EXIT STATUS"; do
    page=${entry%%:*}
    text=$(render "$page") || fail "$page does not render: $(cat "$mandir/$page.err")"
    [ -s "$mandir/$page.err" ] && fail "$page: groff warns: $(cat "$mandir/$page.err")"
    IFS='|' read -ra sections <<<"NAME|SYNOPSIS|DESCRIPTION|SEE ALSO|${entry#*:}"
    for section in "${sections[@]}"; do
        grep -q "^${section%% *}" <<<"$text" || fail "$page has no section $section"
        checks=$((checks + 1))
    done
    printf '%s\n' "$text" >"$mandir/$page.txt"
done
# the pages say what the programs do
for option in $("$broker_bin" --help | grep -oE -- '--[a-z]+' | sort -u); do
    grep -qF -- "$option" "$mandir/kim-broker.8.txt" || fail "kim-broker(8) lacks $option"
    checks=$((checks + 1))
done
for option in $("$agent_bin" --help | grep -oE -- '--[a-z]+' | sort -u); do
    grep -qF -- "$option" "$mandir/kim-agent.8.txt" || fail "kim-agent(8) lacks $option"
    checks=$((checks + 1))
done
for key in $(sed -n 's/^ *#\? *\([a-z_]*\) = .*/\1/p' "$agent_sample" | sort -u); do
    grep -qw -- "$key" "$mandir/kim-agent.8.txt" || fail "kim-agent(8) lacks the key $key"
    checks=$((checks + 1))
done
for command in $("$kim" --help | sed -n '/^Commands:/,/^$/p' | awk 'NR > 1 && NF {print $1}'); do
    sed -n '/^COMMANDS/,/^CONNECTION OPTIONS/p' "$mandir/kim.1.txt" | grep -qE "^ {4,8}([a-z]+, )?$command\b" \
        || fail "kim(1) lacks the command $command"
    checks=$((checks + 1))
done
for key in $(sed -n 's/^ *#\? *\([a-z_]*\) = .*/\1/p' "$sample" | sort -u); do
    grep -qw -- "$key" "$mandir/kim.cfg.5.txt" || fail "kim.cfg(5) lacks the key $key"
    checks=$((checks + 1))
done
printf 'test_man: %d checks passed\n' "$checks"
