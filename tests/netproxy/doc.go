// Package netproxy is a userspace TCP proxy that emulates a network link
// between its clients and one target (tc netem is not available on the test
// machines): a bandwidth limit, an added delay, and byte and connection
// counters.
//
// # Link model
//
// Each direction (client to target "up", target to client "down") is one
// link shared by all connections, like the two directions of a full-duplex
// network path: Rate bytes per second per direction, scheduled first come
// first served by a token bucket that holds at most Burst bytes. A chunk read
// from one side is scheduled on its link and delivered to the other side RTT/2
// after its transmission ended. A reader stays at most 20 ms ahead of its
// link's schedule (so timer jitter does not idle the link, and a busy
// connection adds at most about 20 ms of queueing to the others); waiting for
// the link pushes back on the sender through TCP. Delays are applied per chunk
// by timestamp while later chunks are already in transmission, so a long
// delay does not lower the throughput of a stream, as on a real link; the
// bytes a direction may hold in flight are bounded (twice the
// bandwidth-delay product, at least 1 MiB).
//
// Half-closes are passed on (a client's shutdown(SHUT_WR) reaches the target
// after the delay), and a connection ends when both directions have ended or
// either side fails.
package netproxy
