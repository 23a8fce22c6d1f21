"""Two aioice agents (a third-party ICE implementation with its own TURN client) connect
through a uturn relay with the relay-only policy, then exchange data both ways.

Usage: aioice_pair.py HOST PORT USER PASSWORD
Prints one line per step; exits 0 when every message arrived intact, non-zero otherwise.
"""
import asyncio
import sys

import aioice
from aioice.ice import TransportPolicy


async def main(host: str, port: int, user: str, password: str) -> int:
    def agent(controlling: bool) -> aioice.Connection:
        return aioice.Connection(
            ice_controlling=controlling,
            turn_server=(host, port),
            turn_username=user,
            turn_password=password,
            use_ipv6=False,
            transport_policy=TransportPolicy.RELAY,
        )

    a, b = agent(True), agent(False)
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    for x in (a, b):
        kinds = sorted({c.type for c in x.local_candidates})
        print(f"gathered {len(x.local_candidates)} candidates: {kinds}")
        if kinds != ["relay"]:
            print("expected relay candidates only")
            return 1

    # Signalling: credentials and candidates, as SDP candidate strings.
    for src, dst in ((a, b), (b, a)):
        dst.remote_username = src.local_username
        dst.remote_password = src.local_password
        for c in src.local_candidates:
            await dst.add_remote_candidate(aioice.Candidate.from_sdp(c.to_sdp()))
        await dst.add_remote_candidate(None)

    await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), timeout=20)
    print("connected")

    for i in range(20):
        msg = f"ping {i} ".encode() * 20
        await a.send(msg)
        got = await asyncio.wait_for(b.recv(), timeout=5)
        if got != msg:
            print(f"a->b message {i} differs")
            return 1
        await b.send(got[::-1])
        back = await asyncio.wait_for(a.recv(), timeout=5)
        if back != msg[::-1]:
            print(f"b->a message {i} differs")
            return 1
    print("exchanged 20 messages each way through the relay")
    await asyncio.gather(a.close(), b.close())
    return 0


if __name__ == "__main__":
    host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    sys.exit(asyncio.run(main(host, port, user, password)))
