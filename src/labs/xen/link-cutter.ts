// Lab fault injection for the "Domain state is now undefined" test: a transport wrapper used as
// xl's SSHCOMMAND (`xl migrate -s "perl LINK_CUTTER_PATH ssh" ...`; xl runs
// `sh -c "exec SSHCOMMAND HOST xl migrate-receive -p"`). It relays xl <-> the real transport
// byte for byte until the sender gives the receiver permission to unpause — xl's point of no
// return — then lets the link die: it forwards that message, relays nothing back for 3 s, kills
// the transport and exits. The receiver gets the domain; the sender never reads the receiver's
// report, prints "Domain state is now undefined" and leaves `DOM--migratedaway` behind.
import { runOk, type Executor } from '../../drivers/xen/executor.js';

export const LINK_CUTTER_PATH = '/usr/local/sbin/ferry-link-cutter';

// Only perl-base modules: the dom0 has no others.
export const LINK_CUTTER_SCRIPT = String.raw`#!/usr/bin/perl
# ferry-link-cutter COMMAND [ARG...]: lab fault injection, see src/labs/xen/link-cutter.ts.
use strict;
use warnings;
use IPC::Open2;
use POSIX ();

my $READY = 'domain received, ready to unpause';            # receiver -> sender
my $GO    = 'domain is yours, you are cleared to unpause';  # sender -> receiver: point of no return
die "usage: $0 COMMAND [ARG...]\n" unless @ARGV;

$SIG{PIPE} = 'IGNORE';
my $pid = open2(my $from_child, my $to_child, @ARGV);
binmode $_ for \*STDIN, \*STDOUT, $from_child, $to_child;

sub put {
  my ($fh, $data) = @_;
  while (length $data) {
    my $n = syswrite($fh, $data);
    if (!defined $n) { next if $!{EINTR}; return 0 }
    substr($data, 0, $n) = '';
  }
  return 1;
}

# Does $buf, after the previous chunk's tail, contain $pat? Keeps the tail for the next chunk.
sub seen {
  my ($tail, $buf, $pat) = @_;
  my $s = $$tail . $buf;
  my $keep = length($pat) - 1;
  $$tail = length($s) > $keep ? substr($s, -$keep) : $s;
  return index($s, $pat) >= 0;
}

# Each direction in its own process, so blocking writes cannot deadlock the relay.
my ($parent, $armed) = ($$, 0);
$SIG{USR1} = sub { $armed = 1 };  # the receiver is ready: only now can the GO message come
my $down = fork() // die "fork: $!\n";
if (!$down) {  # child's stdout -> our stdout
  close STDIN; close $to_child;
  my $tail = '';
  while (1) {
    my $n = sysread($from_child, my $buf, 65536);
    next if !defined $n && $!{EINTR};
    last if !$n;
    kill 'USR1', $parent if seen(\$tail, $buf, $READY);
    put(\*STDOUT, $buf) or last;
  }
  POSIX::_exit(0);
}
close STDOUT; close $from_child;

my $tail = '';
while (1) {  # our stdin -> child's stdin
  my $n = sysread(STDIN, my $buf, 65536);
  next if !defined $n && $!{EINTR};
  last if !$n;
  if ($armed && seen(\$tail, $buf, $GO)) {
    kill 'STOP', $down;  # nothing more goes back to xl, yet its end of the link stays open
    put($to_child, $buf);
    print STDERR "ferry-link-cutter: forwarded the GO message; cutting the link in 3 s\n";
    sleep 3;
    kill 'KILL', $pid, $down;
    waitpid $_, 0 for $down, $pid;
    exit 1;
  }
  put($to_child, $buf) or last;
}
close $to_child;
waitpid $down, 0;
waitpid $pid, 0;
exit($? & 127 ? 1 : $? >> 8);
`;

export async function installLinkCutter(ex: Executor): Promise<void> {
  await ex.writeFile(LINK_CUTTER_PATH, LINK_CUTTER_SCRIPT);
  await runOk(ex, 'chmod', ['0755', LINK_CUTTER_PATH]);
}
