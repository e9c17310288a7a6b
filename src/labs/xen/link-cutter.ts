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
use IO::Select;
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

my $sel = IO::Select->new(\*STDIN, $from_child);
my ($up_tail, $down_tail, $armed) = ('', '', 0);
while ($sel->count) {
  for my $fh ($sel->can_read) {
    my $n = sysread($fh, my $buf, 65536);
    next if !defined $n && $!{EINTR};
    my $eof = !$n;
    if (fileno($fh) == fileno(STDIN)) {
      if ($eof) { $sel->remove($fh); close $to_child; next }
      put($to_child, $buf);
      # Armed only once the receiver said it is ready, so guest memory cannot trigger the cut.
      if ($armed && seen(\$up_tail, $buf, $GO)) {
        print STDERR "ferry-link-cutter: forwarded the GO message; cutting the link in 3 s\n";
        sleep 3;
        kill 'KILL', $pid;
        waitpid $pid, 0;
        POSIX::_exit(1);
      }
    } else {
      if ($eof) { $sel->remove($fh); close STDOUT; next }
      $armed ||= seen(\$down_tail, $buf, $READY);
      put(\*STDOUT, $buf);
    }
  }
}
waitpid $pid, 0;
exit($? & 127 ? 1 : $? >> 8);
`;

export async function installLinkCutter(ex: Executor): Promise<void> {
  await ex.writeFile(LINK_CUTTER_PATH, LINK_CUTTER_SCRIPT);
  await runOk(ex, 'chmod', ['0755', LINK_CUTTER_PATH]);
}
