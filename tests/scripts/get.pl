# An HTTP GET of http://HOST/ from a Debian container (which has perl but
# no wget): prints the body, or "HOST unreachable".
use IO::Socket::INET;
my $host = $ARGV[0];
my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => 80, Timeout => 4)
    or do { print "$host unreachable\n"; exit 0 };
print $s "GET / HTTP/1.0\r\nHost: $host\r\n\r\n";
my $r = join "", <$s>;
$r =~ s/.*?\r\n\r\n//s;
print $r;
