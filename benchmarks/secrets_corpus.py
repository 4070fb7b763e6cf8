"""Texts for the secret-scanning benchmark, generated from a seed (nothing downloaded).

``one_kb_prompts``: developer-style prompts of exactly 1,024 characters mixing prose, code,
configuration and logs, dense in the words secret rules look for (key, token, password, aws,
auth ...); about one in ten carries a fake credential.

``adversarial_inputs``: texts of a given size built to be slow for a secret scanner: keyword
floods, values that never terminate, one giant token, nested encodings, and so on.
"""

from __future__ import annotations

import base64
import random
import string
from urllib.parse import quote

ALNUM = string.ascii_letters + string.digits

PROSE = [
    "I'm getting a 401 from the API even though the key looks right. What am I missing?",
    "Can you refactor this function so the token is refreshed before it expires?",
    "Explain the difference between an access token and a refresh token in OAuth 2.0.",
    "Our CI pipeline fails at the deploy step; the log is below, please help me read it.",
    "Write a unit test for the password validation rules: 12 characters, one digit.",
    "How should I store secrets for a Kubernetes deployment without committing them?",
    "Summarise the incident: the auth service rejected requests for twenty minutes.",
    "Translate this error message for our support team and suggest a fix.",
    "Why does boto3 say it cannot find credentials when the profile is configured?",
    "Review this pull request for security problems, especially key handling.",
]

CODE = [
    'import os\n\nAPI_KEY = os.environ["OPENAI_API_KEY"]\nclient = OpenAI(api_key=API_KEY)\n',
    "def refresh(session):\n    token = session.get_token()\n    if token.expired:\n"
    "        token = session.refresh(token.refresh_token)\n    return token\n",
    "const secret = process.env.JWT_SECRET;\napp.use(auth({ secret, algorithms: ['HS256'] }));\n",
    "s3 = boto3.client('s3', region_name='eu-west-1')\nfor obj in s3.list_objects(Bucket=b):\n"
    "    print(obj['Key'])\n",
    "password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=12))\n",
    "headers = {'Authorization': f'Bearer {token}', 'Content-Type': 'application/json'}\n",
    'if (!user.passwordMatches(input)) { throw new AuthError("invalid credentials"); }\n',
]

CONFIG = [
    "database:\n  host: db.internal\n  port: 5432\n  user: app\n  password: ${DB_PASSWORD}\n",
    "[default]\nregion = us-east-1\noutput = json\n# aws_access_key_id comes from the vault\n",
    '{"auth": {"provider": "oidc", "client_id": "web-frontend", "token_ttl": 3600}}\n',
    "env:\n  - name: GITHUB_TOKEN\n    valueFrom:\n      secretKeyRef: {name: gh, key: token}\n",
    "SLACK_WEBHOOK_URL=\nSENTRY_DSN=\nSTRIPE_PUBLISHABLE_KEY=pk_test_placeholder\n",
]

LOGS = [
    "2024-05-01T10:02:11Z INFO auth token refreshed for user 18231 (expires in 3600s)\n",
    "2024-05-01T10:02:12Z WARN key rotation skipped: secret manager returned 503\n",
    "2024-05-01T10:02:13Z ERROR api request failed: status=403 reason=missing scope\n",
    "2024-05-01T10:02:14Z DEBUG credentials loaded from profile 'ci' (source: env)\n",
]


def _fake_credential(rng: random.Random) -> str:
    def body(n: int) -> str:
        return "".join(rng.choice(ALNUM) for _ in range(n))

    choices = [
        "gh" + "p_" + body(36),
        "AK" + "IA" + "".join(rng.choice(string.ascii_uppercase + "234567") for _ in range(16)),
        "xo" + "xb-" + "".join(rng.choice(string.digits) for _ in range(12)) + "-" + body(24),
        f'password = "{body(18)}"',
        "postgres://app:" + body(14) + "@db.internal:5432/app",
    ]
    return "Here is the value I used: " + rng.choice(choices) + "\n"


def one_kb_prompts(count: int, seed: int = 1, size: int = 1024) -> list[str]:
    rng = random.Random(seed)
    prompts: list[str] = []
    pools = [PROSE, CODE, CONFIG, LOGS]
    while len(prompts) < count:
        parts: list[str] = [rng.choice(PROSE) + "\n\n"]
        if rng.random() < 0.1:
            parts.append(_fake_credential(rng))
        while sum(map(len, parts)) < size:
            parts.append(rng.choice(rng.choice(pools)) + "\n")
        prompts.append("".join(parts)[:size])
    return prompts


def _fill(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def adversarial_inputs(size: int = 1 << 20, seed: int = 7) -> dict[str, str]:
    """Inputs aimed at the scanner's weak spots, each ``size`` characters long."""
    rng = random.Random(seed)

    def token(n: int) -> str:
        return "".join(rng.choice(ALNUM) for _ in range(n))

    words = [
        "api_key", "secret", "token", "password", "aws", "auth", "github", "slack", "stripe",
        "twilio", "heroku", "jwt", "bearer", "private key", "curl", "client_secret", "npm_",
        "ghp_", "xoxb-", "sk_live_", "AKIA", "hf_", "glpat-", "sk-ant-api03-", "SG.", "eyJ",
    ]  # fmt: skip
    dense = "".join(f'{rng.choice(words)}_{i} = "{token(32)}"\n' for i in range(size // 40 + 1))
    nested = dense[: size * 3 // 10]
    for _ in range(3):
        nested = base64.b64encode(nested.encode()).decode()
    return {
        # every keyword again and again, each followed by a plausible value
        "dense assignments": dense[:size],
        # all keywords, no values: every rule runs over a text full of near misses
        "keyword flood": _fill(" ".join(words) + " = = : := => \n", size),
        # assignments whose quoted values never end
        "unterminated values": _fill('api_key = "' + "A" * 4000 + "\n", size),
        # one character repeated
        "single character run": "a" * size,
        # one base64-alphabet token the decoder has to consider
        "giant token": token(size),
        # secrets under three layers of base64
        "nested base64": _fill(nested, size),
        # percent-escapes end to end
        "percent run": _fill(quote("password=" + token(20) + "&"), size),
        # a private key header whose body never ends
        "unterminated PEM": "-----BEGIN RSA PRIVATE KEY-----\n" + _fill(token(64) + "\n", size),
        # the multi-line curl rules' favourite shape, repeated
        "curl flood": _fill("curl -u user:" + "x" * 30 + " \\\n  -H 'Authorization: ", size),
        # random printable ASCII
        "random printable": "".join(rng.choice(string.printable) for _ in range(size)),
    }
