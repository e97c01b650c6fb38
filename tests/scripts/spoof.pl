# Run in a container (as root, with Docker's default CAP_NET_RAW): sends
# frames onto its network, each marked "mark:TAG;" for tests/scripts/sniff.py
# on the host's bridge: ARP and IPv4 from its own addresses (ctl-*), ARP
# claiming another address (spoof-ip-arp), a frame from another MAC
# (spoof-mac), IPv4 from another address (spoof-ip), an ethertype other
# than IPv4 and ARP (other-type), and a link-local (LLDP) frame from
# another MAC, which a bridge passes up without its prerouting hook
# (spoof-lldp); "end" last.
use strict;
use warnings;
use Socket;

sub slurp { open my $f, '<', $_[0] or die "$_[0]: $!"; my $l = <$f>; chomp $l; return $l }
my $ifindex = slurp('/sys/class/net/eth0/ifindex');
my $mac = pack('H12', join('', split /:/, slurp('/sys/class/net/eth0/address')));
my $myip;
open my $h, '<', '/etc/hosts' or die "hosts: $!";
while (<$h>) { $myip = inet_aton($1) if /^(10\.213\.\d+\.\d+)\s/ }
die "no address in /etc/hosts" unless $myip;
my $gw = inet_aton('10.213.0.1');
my $bcast = "\xff" x 6;

socket(my $p, 17, SOCK_RAW, 0) or die "packet socket: $!";    # AF_PACKET
my $to = pack('S n i S C C a8', 17, 0x0806, $ifindex, 1, 0, 6, $bcast);
sub frame { send($p, $_[0], 0, $to) or die "send: $!" }
sub arp {
    my ($src, $spa, $tag) = @_;
    frame($bcast . $src . pack('n', 0x0806)
        . pack('n n C C n', 1, 0x0800, 6, 4, 1) . $src . $spa . ("\0" x 6) . $gw
        . "mark:$tag;");
}

socket(my $r, PF_INET, SOCK_RAW, 255) or die "raw socket: $!";    # IPPROTO_RAW
sub ip {
    my ($src, $tag) = @_;
    my $data = "mark:$tag;";
    my $udp = pack('n n n n', 40000, 9, 8 + length $data, 0) . $data;
    my $hdr = pack('C C n n n C C n a4 a4', 0x45, 0, 20 + length $udp, 0, 0, 64, 17, 0, $src, $gw);
    send($r, $hdr . $udp, 0, pack_sockaddr_in(0, $gw)) or die "send ip: $!";
}

my $other = pack('H12', '020000000099');
for (1 .. 3) {
    arp($mac, $myip, 'ctl-arp');
    arp($mac, inet_aton('10.213.0.77'), 'spoof-ip-arp');
    arp($other, $myip, 'spoof-mac');
    frame($bcast . $mac . pack('n', 0x88b5) . 'mark:other-type;');
    frame(pack('H12', '0180c200000e') . $other . pack('n', 0x88cc) . 'mark:spoof-lldp;');
    ip($myip, 'ctl-ip');
    ip(inet_aton('10.213.200.200'), 'spoof-ip');
    select(undef, undef, undef, 0.2);
}
arp($mac, $myip, 'end');
print "sent\n";
