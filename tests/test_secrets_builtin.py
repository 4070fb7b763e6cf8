"""The built-in rule pack: every rule finds its true examples and skips its false ones."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from secrets_fakes import (
    ALNUM,
    B64,
    HEX,
    LOWER_ALNUM,
    UPPER_B32,
    URLSAFE,
    Fakes,
    j,
)

from guardrails.secrets import SecretScanner, builtin_ruleset

f = Fakes()
PASSWORD = f.mixed(18)

# rule id -> (texts it must find, texts it must not find)
Examples = dict[str, tuple[list[str], list[str]]]
EXAMPLES: Examples = {
    "aws-access-key-id": (
        [
            f"aws_access_key_id = {j('AK', 'IA')}{f.chars(UPPER_B32, 16)}",
            f"export AWS_SESSION={j('AS', 'IA')}{f.chars(UPPER_B32, 16)}",
        ],
        [
            j("AK", "IA") + "X" * 16,  # placeholder: too little entropy
            j("AK", "IA") + f.chars(UPPER_B32, 9) + "EXAMPLE",  # AWS documentation style
            "TODAYIN" + j("AS", "IA") + "ASACKOFRICEFELLOVER",  # inside a longer word
        ],
    ),
    "aws-secret-access-key": (
        [f"aws_secret_access_key = {f.mixed(40, ALNUM + '+/')}"],
        [
            f"aws_region_name = {f.mixed(40, ALNUM + '+/')}",
            f"aws_secret_access_key = {f.chars(B64, 30)}EXAMPLEKEY",
        ],
    ),
    "aws-bedrock-api-key": (
        [
            j("AB", "SK") + f.mixed(132, ALNUM + "+/") + "=",
            j("bedrock-api-key-", "YmVkcm9jay5hbWF6b25hd3MuY29t") + f.chars(B64, 60),
        ],
        [j("AB", "SK") + f.mixed(40), j("bedrock-api-key-", "YmVkcm9jay5hbWF6b25hd3MuY29x")],
    ),
    "google-api-key": (
        [f'apiKey: "{j("AI", "za")}{f.mixed(35, URLSAFE)}"'],
        [
            j("AI", "za") + "a" * 35,
            j("AI", "za") + f.mixed(45, URLSAFE),  # too long
            j("AI", "zaSy") + "abcdefghijklmnopqrstuvwxyz1234567",
        ],
    ),
    "google-oauth-client-secret": (
        [j("GOC", "SPX-") + f.mixed(28, URLSAFE)],
        [j("GOC", "SPX-") + f.mixed(12)],
    ),
    "azure-ad-client-secret": (
        [
            f"client_secret={f.chars(ALNUM, 3)}8{j('Q', '~')}{f.mixed(34, ALNUM + '_~.-')}",
            f"(use {f.chars(ALNUM, 3)}7{j('Q', '~')}{f.mixed(31, ALNUM + '_~.-')})",
        ],
        [
            "client_secret=bP88" + j("Q", "~") + "x" * 34,
            "speel~VARA_101375237~mh17-het-verdriet-van-nederland~.html",
        ],
    ),
    "azure-storage-account-key": (
        [
            "DefaultEndpointsProtocol=https;AccountName=acme;"
            f"{j('Account', 'Key')}={f.mixed(86, ALNUM + '+/')}==;EndpointSuffix=core.windows.net"
        ],
        [f"{j('Account', 'Key')}={f.mixed(20)}"],
    ),
    "azure-shared-access-key": (
        [
            "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=Root;"
            f"{j('SharedAccess', 'Key')}={f.mixed(43, ALNUM + '+/')}="
        ],
        ["Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedKey"],
    ),
    "github-pat": (
        [f'GITHUB_TOKEN="{j("gh", "p_")}{f.mixed(36)}"'],
        [j("gh", "p_") + "x" * 36, j("gh", "p_") + f.mixed(20)],
    ),
    "github-fine-grained-pat": (
        [j("github", "_pat_") + f.mixed(22) + "_" + f.mixed(59)],
        [j("github", "_pat_") + "x" * 22 + "_" + "x" * 59],
    ),
    "github-oauth-token": (
        [j("gh", "o_") + f.mixed(36)],
        [j("gh", "o_") + "x" * 36],
    ),
    "github-app-token": (
        [j("gh", "u_") + f.mixed(36), j("gh", "s_") + f.mixed(36)],
        [j("gh", "s_") + "x" * 36],
    ),
    "github-refresh-token": (
        [j("gh", "r_") + f.mixed(36)],
        [j("gh", "r_") + "x" * 36],
    ),
    "gitlab-pat": (
        [
            j("gl", "pat-") + f.mixed(20, URLSAFE),
            j("gl", "pat-") + f.mixed(27, URLSAFE) + "." + f.chars(LOWER_ALNUM, 9),
        ],
        ["glpat-XXXXXXXXXXX-XXXXXXXX"],
    ),
    "gitlab-token": (
        [
            j("gl", "rt-") + f.mixed(20, URLSAFE),
            j("gl", "dt-") + f.mixed(20, URLSAFE),
            j("gl", "ptt-") + f.chars(HEX, 40),
        ],
        [j("gl", "rt-") + f.mixed(8), "glptt-" + "x" * 40],
    ),
    "gitlab-runner-registration-token": (
        [j("GR13", "48941") + f.mixed(20, URLSAFE)],
        [j("GR13", "48941") + "X" * 20],
    ),
    "gitlab-session-cookie": (
        [j("_gitlab_", "session=") + f.chars(LOWER_ALNUM, 32)],
        [j("_gitlab_", "session=") + "x" * 32],
    ),
    "bitbucket-app-password": (
        [j("AT", "BB") + f.mixed(32)],
        [j("AT", "BB") + f.mixed(8)],
    ),
    "bitbucket-client-credential": (
        [f'bitbucket_client_secret = "{f.mixed(32)}"', f"BITBUCKET_KEY: {f.mixed(64)}"],
        ['bitbucket_url = "https://bitbucket.org/acme/repo"'],
    ),
    "atlassian-api-token": (
        [j("ATA", "TT3") + f.mixed(186, URLSAFE + "=")],
        [j("ATA", "TT3") + f.mixed(40)],
    ),
    "atlassian-legacy-api-token": (
        [f"jira_token: {f.chars(LOWER_ALNUM, 20)}1a2b"],
        ["getPagesInConfluenceSpace,searchConfluenceUsingCql"],
    ),
    "openai-api-key": (
        [
            j("sk-", "proj-") + f.mixed(156, URLSAFE),
            j("sk-", "svcacct-") + f.mixed(74, URLSAFE) + j("T3Blbk", "FJ") + f.mixed(74),
            j("sk-") + f.mixed(20) + j("T3Blbk", "FJ") + f.mixed(20),
        ],
        [j("sk-", "proj-") + "short", "sk-" + "x" * 20 + "T3BlbkFJ" + "x" * 20],
    ),
    "anthropic-api-key": (
        [j("sk-", "ant-", "api03-") + f.mixed(93, URLSAFE) + "AA"],
        [
            j("sk-", "ant-", "api03-") + f.mixed(93, URLSAFE) + "BB",
            j("sk-", "ant-", "api03-") + f.mixed(60, URLSAFE) + "AA",
        ],
    ),
    "anthropic-admin-key": (
        [j("sk-", "ant-", "admin01-") + f.mixed(93, URLSAFE) + "AA"],
        [j("sk-", "ant-", "admin01-") + f.mixed(50, URLSAFE) + "AA"],
    ),
    "huggingface-token": (
        [f"huggingface-cli login --token {j('hf', '_')}{f.mixed(34, ALNUM[:52])}"],
        [
            "- (id)hf_requiredCharacteristicTypesForDisplayMetadata;",
            'os.environ.get("HF_AUTH_TOKEN", "' + "hf_" + "x" * 34 + '")',
        ],
    ),
    "huggingface-org-token": (
        [j("api", "_org_") + f.mixed(34, ALNUM[:52])],
        ["const api_org_controller = require('../controllers/api');"],
    ),
    "groq-api-key": (
        [j("gs", "k_") + f.mixed(52)],
        [j("gs", "k_") + f.mixed(20)],
    ),
    "mistral-api-key": (
        [f"MISTRAL_API_KEY={f.mixed(32)}"],
        ["MISTRAL_MODEL=mistral-large-latest"],
    ),
    "cohere-api-key": (
        [f"export CO_API_KEY={f.mixed(40)}", f'cohere_api_token = "{f.mixed(40)}"'],
        ["CO_API_KEY=" + "x" * 40],
    ),
    "xai-api-key": (
        [j("xa", "i-") + f.mixed(80)],
        [j("xa", "i-") + f.mixed(30)],
    ),
    "perplexity-api-key": (
        [j("pp", "lx-") + f.mixed(48)],
        [j("pp", "lx-") + f.mixed(20)],
    ),
    "stripe-secret-key": (
        [j("sk", "_live_") + f.mixed(24), j("rk", "_test_") + f.mixed(99)],
        ["the task_test_runner module", j("sk", "_live_") + "short"],
    ),
    "stripe-webhook-secret": (
        [j("wh", "sec_") + f.mixed(32)],
        [j("wh", "sec_") + "x" * 32],
    ),
    "slack-token": (
        [
            j("xo", "xb-") + f"{f.digits(12)}-{f.digits(13)}-{f.mixed(24)}",
            j("xo", "xp-") + f"{f.digits(11)}-{f.digits(10)}-{f.digits(11)}-{f.chars(HEX, 32)}",
        ],
        ["xoxb-12345-abcd234", "xoxb-Slack_BOT_TOKEN", "https://github.com/xoxa-nyc/xoxa-nyc"],
    ),
    "slack-config-token": (
        [j("xo", "xe.", "xoxp-1-") + f.mixed(160)],
        ["xoxe.xoxp-1-SlackAppConfigurationAccessTokenHere", "xoxe-1-xxx"],
    ),
    "slack-app-token": (
        [j("xa", "pp-1-") + f"A{f.chars(UPPER_B32, 10)}-{f.digits(13)}-{f.chars(HEX, 64)}"],
        ["xapp-1-ABC-123-abc"],
    ),
    "slack-webhook-url": (
        [
            j("https://hooks.", "slack.com/services/")
            + f"T{f.chars(UPPER_B32, 8)}/B{f.chars(UPPER_B32, 8)}/{f.mixed(24)}"
        ],
        ["https://hooks.slack.com/services/ (create one in the app settings)"],
    ),
    "twilio-api-key": (
        [j("S", "K") + f.chars(HEX, 32)],
        [j("S", "K") + "0" * 32, "TASK" + f.chars(HEX, 32)],
    ),
    "twilio-auth-token": (
        [f"TWILIO_AUTH_TOKEN={f.chars(HEX, 32)}"],
        ["TWILIO_REGION=us1"],
    ),
    "sendgrid-api-key": (
        [j("S", "G.") + f.mixed(22, URLSAFE) + "." + f.mixed(43, URLSAFE)],
        [j("S", "G.") + f.mixed(20)],
    ),
    "discord-bot-token": (
        [j("M", "T") + f.mixed(24, URLSAFE) + "." + f.mixed(6) + "." + f.mixed(38, URLSAFE)],
        ["M" + "x" * 24 + "." + "x" * 6 + "." + "x" * 38],
    ),
    "discord-webhook-url": (
        [j("https://discord.com/api/", "webhooks/") + f.digits(18) + "/" + f.mixed(68, URLSAFE)],
        ["https://discord.com/api/webhooks/ is the endpoint"],
    ),
    "discord-client-credential": (
        [f"DISCORD_CLIENT_SECRET={f.mixed(32)}"],
        ["discord=000000000000000000"],
    ),
    "telegram-bot-token": (
        [f"bot {f.digits(10)}:{j('A', 'A')}{f.mixed(33, URLSAFE)} ready"],
        [
            'telegram_api_token = "7502:Ahv1dcxsh_drrenffysqob1brbh9g22vrkn"',
            '<xsd:element type="clm87355:AgencyIdentificationCodeContentType"/>',
        ],
    ),
    "npm-access-token": (
        [j("np", "m_") + f.mixed(36)],
        [j("np", "m_") + "x" * 36],
    ),
    "npm-auth-token": (
        [f"//registry.npmjs.org/:{j('_auth', 'Token')}={f.mixed(36, ALNUM + '-')}"],
        ["//registry.npmjs.org/:_authToken=${NPM_TOKEN}"],
    ),
    "pypi-upload-token": (
        [j("py", "pi-", "AgEIcHlwaS5vcmc") + f.mixed(70, URLSAFE)],
        [j("py", "pi-", "AgEIcHlwaS5vcmc") + "short"],
    ),
    "private-key": (
        [
            j("-----BEGIN RSA ", "PRIVATE KEY-----\n")
            + f.pem_body()
            + j("\n-----END RSA ", "PRIVATE KEY-----"),
            # JSON-escaped, as in a cloud service-account file
            j('"private_key": "-----BEGIN ', "PRIVATE KEY-----\\n")
            + f.pem_body().replace("\n", "\\n")
            + j("\\n-----END ", 'PRIVATE KEY-----\\n"'),
            # cut off before the END line
            j("-----BEGIN OPENSSH ", "PRIVATE KEY-----\n") + f.pem_body(3),
        ],
        [
            "-----BEGIN PRIVATE KEY-----\nanything\n-----END PRIVATE KEY-----",
            "-----BEGIN PUBLIC KEY-----\n" + f.pem_body() + "\n-----END PUBLIC KEY-----",
        ],
    ),
    "jwt": (
        [f"Authorization: Bearer {f.jwt()}"],
        ["eyJhbGciOi.eyJzdWIi.", "the key.eyes are closed"],
    ),
    "db-connection-string": (
        [
            f"DATABASE_URL=postgres://app:{PASSWORD}@db.internal:5432/app",
            f"mongodb+srv://svc:{PASSWORD}@cluster0.mongodb.net/prod",
        ],
        [
            "postgres://app:password@localhost/db",
            "postgres://db.internal:5432/app",
            "redis://:${REDIS_PASSWORD}@cache:6379",
        ],
    ),
    "db-connection-string-password": (
        [f"Server=tcp:acme.database.windows.net,1433;Database=app;Password={PASSWORD};"],
        ["Server=localhost;Database=app;Password=changeme;"],
    ),
    "url-basic-auth": (
        [f"git clone https://deploy:{PASSWORD}@git.acme.dev/team/repo.git"],
        [
            "https://user:password@example.com/",
            "see https://example.com/a:b@c for details",
        ],
    ),
    "generic-secret": (
        [
            f'password = "{f.mixed(20)}"',
            f"api_key: {f.mixed(32)}",
            f'  "client_secret" : "{f.chars(HEX, 64)}",',
            f"mySecretString={f.mixed(30)}",
            f"<authToken>\n    {f.mixed(40)}\n</authToken>",
        ],
        [
            'password = "${DB_PASSWORD}"',
            'api_key = os.environ["API_KEY"]',
            "token_url = 'https://github.com/login/oauth/access_token'",
            "secretSize must be >= XXH3_SECRET_SIZE_MIN",
            f'publicToken = "{f.mixed(43)}"',
            f"credentialsId: '{f.chars(HEX, 8)}-{f.chars(HEX, 4)}-{f.chars(HEX, 4)}'",
            "author = 'jane.doe@example.com'",
            'passwordVariable: "PASSWORD"',
        ],
    ),
}


@pytest.fixture(scope="module")
def scanner() -> SecretScanner:
    return SecretScanner.builtin()


def test_every_builtin_rule_has_examples() -> None:
    rule_ids = {r.id for r in builtin_ruleset().rules}
    assert set(EXAMPLES) == rule_ids
    for rule_id, (true, false) in EXAMPLES.items():
        assert true and false, rule_id


def _cases(pick: Callable[[tuple[list[str], list[str]]], list[str]]) -> list[tuple[str, str]]:
    return [(rule_id, text) for rule_id, pair in EXAMPLES.items() for text in pick(pair)]


@pytest.mark.parametrize(("rule_id", "text"), _cases(lambda p: p[0]))
def test_rule_finds_true_example(scanner: SecretScanner, rule_id: str, text: str) -> None:
    found = {x.rule_id for x in scanner.scan(text)}
    assert rule_id in found, f"{rule_id} missed; found {sorted(found)}"


@pytest.mark.parametrize(("rule_id", "text"), _cases(lambda p: p[1]))
def test_rule_skips_false_example(scanner: SecretScanner, rule_id: str, text: str) -> None:
    found = {x.rule_id for x in scanner.scan(text)}
    assert rule_id not in found


def test_prose_and_code_without_secrets_are_clean(scanner: SecretScanner) -> None:
    texts = [
        "Please summarise the attached meeting notes and list the action items.",
        "def get_token(user):\n    return tokens.lookup(user.id)  # no literal secret\n",
        "Set the API key in the OPENAI_API_KEY environment variable, then run make test.",
        "The password must be at least 12 characters long and contain a digit.",
        "curl -H 'Authorization: Bearer $TOKEN' https://api.example.com/v1/items",
        "key: value\nsecret_name: db-credentials\ntoken_ttl: 3600\n",
    ]
    for text in texts:
        assert scanner.scan(text) == [], text
