"""Fake credentials for the secret-scanning tests, built at run time.

Nothing here is a real secret, and no literal in this file has a provider's token shape:
prefixes are joined from pieces and bodies come from a seeded generator, so secret scanners
(GitHub push protection included) have nothing to match in the source.
"""

from __future__ import annotations

import base64
import json
import random
import string

ALNUM = string.ascii_letters + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits
UPPER_B32 = string.ascii_uppercase + "234567"
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"


class Fakes:
    """A seeded source of random token bodies."""

    def __init__(self, seed: int = 20240501) -> None:
        self._rng = random.Random(seed)

    def chars(self, alphabet: str, n: int) -> str:
        return "".join(self._rng.choice(alphabet) for _ in range(n))

    def mixed(self, n: int, alphabet: str = ALNUM) -> str:
        """Random characters with at least one digit, upper and lower case letter (of those
        the alphabet has)."""
        wanted = [
            test
            for test in (str.isdigit, str.isupper, str.islower)
            if any(test(c) for c in alphabet)
        ]
        while True:
            body = self.chars(alphabet, n)
            if all(any(test(c) for c in body) for test in wanted):
                return body

    def digits(self, n: int) -> str:
        return str(self._rng.randint(1, 9)) + self.chars(string.digits, n - 1)

    def jwt(self) -> str:
        def part(obj: dict[str, object]) -> str:
            raw = json.dumps(obj, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")

        header = part({"alg": "HS256", "typ": "JWT"})
        payload = part({"sub": self.chars(LOWER_ALNUM, 12), "iat": 1700000000})
        return f"{header}.{payload}.{self.chars(URLSAFE, 43)}"

    def pem_body(self, lines: int = 6) -> str:
        return "\n".join(self.chars(B64, 64) for _ in range(lines))


def j(*parts: str) -> str:
    """Join pieces: keeps token prefixes out of the source as single literals."""
    return "".join(parts)
