"""Word lists for the match verifier (``sidecar.cache.match.verify``).

Kept apart from the logic so the lists can grow without touching the checks. Every entry is
lower case. The lists are general English and common product vocabulary, not tuned to any one
test set: an operator whose traffic has its own "either/or" vocabulary can extend them.
"""

from __future__ import annotations

# Words that turn a statement into its opposite when present on one side only.
NEGATIONS: frozenset[str] = frozenset(
    """not no non never none nobody nothing nowhere neither nor without cannot unable
    dont doesnt didnt cant wont isnt arent wasnt werent shouldnt wouldnt couldnt hasnt
    havent hadnt mustnt neednt aint""".split()
)

# Opposite poles. Each axis is (pole A forms, pole B forms); a question with only pole A and a
# cached question with only pole B need different answers ("open" vs "closed").
_AXES_TEXT = """
open opens opening opened reopen | close closes closed closing shut
safe safer safest harmless | unsafe dangerous harmful risky
enable enables enabled enabling activate | disable disables disabled disabling deactivate
include includes included including inclusive | exclude excludes excluded excluding exclusive
allow allows allowed allowing permit permitted | deny denies denied forbid forbidden prohibit
before prior earlier earliest pre | after later latest post
increase increases increased raise raises raised | decrease decreases decreased reduce reduced lower
buy buys buying bought purchase purchasing | sell sells selling sold
import imports importing imported | export exports exporting exported
upload uploads uploading uploaded | download downloads downloading downloaded
min minimum lowest | max maximum highest
add adds adding added insert | remove removes removing removed delete deletes deleted deleting
on | off
start starts started starting begin | stop stops stopped stopping end
accept accepts accepted approve approved | reject rejects rejected decline declined
high higher | low
up | down
left | right
north northern | south southern
east eastern | west western
push pushes pushing | pull pulls pulling
true | false
hot hotter hottest warm warmer | cold colder coldest cool cooler
gain gains gained gaining | lose loses lost losing loss
win wins won winning | lose loses lost losing
profit profits profitable | loss losses
credit credits credited | debit debits debited
deposit deposits deposited depositing | withdraw withdraws withdrew withdrawing withdrawal
arrive arrives arrived arriving arrival arrivals | depart departs departed departure departures
inbound incoming | outbound outgoing
input inputs | output outputs
ascending asc | descending desc
first | last
new newer newest | old older oldest
big bigger biggest large larger largest | small smaller smallest tiny
long longer longest | short shorter shortest
heavy heavier heaviest | light lighter lightest
fast faster fastest quick quicker quickest | slow slower slowest
cheap cheaper cheapest inexpensive | expensive pricey costly
strong stronger strongest | weak weaker weakest
best | worst
better | worse
most | least fewest
more | less fewer
top | bottom
over above | under below
always | never sometimes
male men man boy boys | female women woman girl girls
boyfriend | girlfriend
husband | wife
father dad | mother mom mum
hire hired hiring | fire fired firing
employer | employee
buyer | seller
landlord | tenant
lend lends lent lending | borrow borrows borrowed borrowing
send sends sent sending | receive receives received receiving
sender | recipient receiver
wet | dry
full | empty
light | dark
day daytime | night nighttime
summer | winter
spring | autumn fall
weekday weekdays | weekend weekends
domestic | international
fixed | variable
gross | net
bull bullish | bear bearish
sync synchronous | async asynchronous
client | server
frontend | backend
local locally | remote remotely
static | dynamic
public | private
uppercase | lowercase
major | minor
horizontal horizontally | vertical vertically
row rows | column columns
width | height
inner | outer
prefix | suffix
head | tail
read reads reading | write writes writing
absolute | relative
upper | lower
acute | chronic
pros | cons
login | logout
signin | signout
checkin | checkout
mount | unmount
join joins joined joining | leave leaves leaving
show shows showing shown visible | hide hides hiding hidden
attach attached | detach detached
encode encoding encoded | decode decoding decoded
zip | unzip
agree | disagree
like likes | dislike dislikes
love | hate
pass passes passed passing | fail fails failed failing
success successful | failure unsuccessful
positive | negative
internal | external
inside indoor indoors | outside outdoor outdoors
front | back
forward | backward backwards
past | future
morning | evening
arrival | departure
healthy healthier healthiest | unhealthy
legal | illegal
overweight | underweight
underpaid | overpaid
strict stricter strictest | lenient relaxed
pause paused pausing suspend suspended | resume resumed resuming unpause
early | late
near nearer nearest closer closest nearby | far farther farthest further furthest distant
merge merged merging combine | split splitting separate
zoomin | zoomout
optin | optout
plugin | unplug
"""


def _axes(text: str) -> tuple[tuple[frozenset[str], frozenset[str]], ...]:
    out: list[tuple[frozenset[str], frozenset[str]]] = []
    for line in text.strip().splitlines():
        left, _, right = line.partition("|")
        out.append((frozenset(left.split()), frozenset(right.split())))
    return tuple(out)


AXES = _axes(_AXES_TEXT)

# Prefixes that make an opposite of the word they are glued to ("lock" vs "unlock").
NEGATING_PREFIXES: tuple[str, ...] = ("un", "in", "im", "il", "ir", "dis", "non", "de", "anti")
# Prefix pairs that swap direction on the same stem ("upload" vs "download").
SWAPPED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("up", "down"),
    ("in", "out"),
    ("im", "ex"),
    ("en", "de"),
    ("hyper", "hypo"),
    ("over", "under"),
    ("pre", "post"),
    ("inter", "intra"),
    ("over", "de"),
)

# Scope words: how much of something the question is about. Members of different groups on
# the two sides ("all" vs "some") change the answer.
SCOPE_GROUPS: tuple[frozenset[str], ...] = (
    frozenset("all every each entire whole".split()),
    frozenset("some any several few certain partly partially".split()),
    frozenset("only solely exclusively".split()),
)
# Restrictors that change an answer even when the other side says nothing ("only cancelled").
RESTRICTORS: frozenset[str] = frozenset("only except excluding excluded besides solely".split())
# Downward comparatives: present on one side only, the question asks the opposite direction.
DOWNWARD: frozenset[str] = frozenset("less least fewer fewest".split())
COMPARATIVE_WORDS: frozenset[str] = frozenset(
    "more most less least fewer fewest better best worse worst than".split()
)


# Time words; "soft" ones on one side only do not change the answer in balanced mode.
WEEKDAYS: dict[str, str] = {
    **{d: d for d in "monday tuesday wednesday thursday friday saturday sunday".split()},
    **{d + "s": d for d in "monday tuesday wednesday thursday friday saturday sunday".split()},
    "tues": "tuesday",
    "weds": "wednesday",
    "thurs": "thursday",
}
MONTHS: dict[str, str] = {
    m: m
    for m in (
        "january february march april may june july august september october november december"
    ).split()
}
MONTHS.update({"jan": "january", "feb": "february", "sept": "september", "oct": "october"})
MONTHS.update({"nov": "november", "dec": "december", "aug": "august", "apr": "april"})
# Named days: one side naming a day the other does not changes the answer.
HOLIDAYS: frozenset[str] = frozenset(
    "tomorrow yesterday tonight christmas easter thanksgiving halloween eve".split()
)
# Parts of a day or year: refused when swapped ("morning" vs "evening"), not when added.
DAY_PARTS: frozenset[str] = frozenset(
    """morning afternoon evening night noon midnight weekend weekends weekday weekdays
    summer winter spring autumn newyear""".split()
)
SOFT_TIME_WORDS: frozenset[str] = frozenset("today now currently nowadays".split())
RELATIVE_PERIODS: frozenset[str] = frozenset("week month year weekend quarter".split())
RELATIVE_MARKERS: frozenset[str] = frozenset("this next last previous coming past".split())

# Number words (``one`` is handled separately: it is usually a pronoun).
SMALL_NUMBERS: dict[str, int] = {
    w: i
    for i, w in enumerate(
        """zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen
        fifteen sixteen seventeen eighteen nineteen twenty""".split()
    )
    if w != "_"
}
SMALL_NUMBERS.update(
    {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80}
)
SMALL_NUMBERS.update({"ninety": 90, "dozen": 12, "twice": 2, "double": 2, "triple": 3})
SCALES: dict[str, int] = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}

# Units and currencies, to one canonical spelling.
_UNITS_TEXT = """
kg: kg kgs kilo kilos kilogram kilograms kilogramme kilogrammes
g: g gram grams gramme grammes gr
mg: mg milligram milligrams
mcg: mcg µg microgram micrograms ug
lb: lb lbs pound pounds
oz: oz ounce ounces
t: tonne tonnes ton tons
km: km kms kilometer kilometers kilometre kilometres kph
m: meter meters metre metres
cm: cm centimeter centimeters centimetre centimetres
mm: mm millimeter millimeters millimetre millimetres
mi: mi mile miles mph
ft: ft foot feet
in: inch inches
l: l liter liters litre litres
ml: ml milliliter milliliters millilitre millilitres
gal: gal gallon gallons
cup: cup cups
tbsp: tbsp tablespoon tablespoons
tsp: tsp teaspoon teaspoons
c: celsius centigrade
f: fahrenheit
ms: ms millisecond milliseconds
s: s sec secs second seconds
min: min mins minute minutes
h: h hr hrs hour hours
day: day days
week: week weeks wk wks
month: month months mo
year: year years yr yrs
kb: kb kilobyte kilobytes
mb: mb megabyte megabytes
gb: gb gigabyte gigabytes
tb: tb terabyte terabytes
mbps: mbps
percent: % percent pct
usd: usd dollar dollars buck bucks $
eur: eur euro euros €
gbp: gbp £ sterling quid
jpy: jpy yen ¥
cad: cad
aud: aud
chf: chf franc francs
inr: inr rupee rupees rs
mxn: mxn peso pesos
cny: cny yuan rmb
btc: btc bitcoin bitcoins
eth: eth ether
"""


def _units(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.strip().splitlines():
        canon, _, forms = line.partition(":")
        for form in forms.split():
            out[form] = canon.strip()
    return out


UNITS = _units(_UNITS_TEXT)
# Unit words that also are ordinary words: units only right after a number.
AMBIGUOUS_UNITS: frozenset[str] = frozenset(
    "g gr t m in l s h c f mo min second day week month year cup cups ton tons".split()
)
CURRENCY_SYMBOLS: dict[str, str] = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr"}

# Function words: never entities, even when capitalised (title case, sentence starts).
STOPWORDS: frozenset[str] = frozenset(
    """a an the and or but if then so of in on at to for from by with about as into onto
    over under is are was were be been being am do does did doing have has had having can
    could would should will shall may might must i me my mine we us our you your he him his
    she her it its they them their this that these those what which who whom whose when
    where why how there here than too very just also not no yes hi hello hey please thanks
    thank dear ok okay im ive id ill youre whats hows wheres whos lets get got make best good
    new some any all one each every many much more most other such own same few both""".split()
)

# Names that matter even when typed in lower case.
KNOWN_NAMES: frozenset[str] = frozenset(
    """python java javascript typescript kotlin scala rust golang ruby php perl swift
    haskell elixir erlang clojure lua dart julia matlab fortran cobol bash powershell zsh
    sql mysql postgres postgresql sqlite mongodb redis cassandra elasticsearch dynamodb
    oracle mariadb react angular vue svelte django flask fastapi rails laravel spring
    express nextjs nuxt node nodejs deno bun jquery pandas numpy pytorch tensorflow keras
    docker kubernetes kubectl helm terraform ansible jenkins git github gitlab bitbucket
    aws azure gcp heroku vercel netlify linux ubuntu debian fedora centos windows macos
    ios android iphone ipad pixel samsung galaxy kindle kobo excel word powerpoint outlook
    gmail slack jira trello notion zoom webex teams salesforce hubspot mailchimp klaviyo
    shopify stripe paypal venmo zelle klarna revolut wise monzo chase visa mastercard amex
    discover netflix spotify hulu disney amazon ebay etsy walmart target costco ikea aldi
    lidl walgreens cvs uber lyft airbnb ryanair easyjet lufthansa emirates delta united
    medicare medicaid tylenol advil ibuprofen aspirin paracetamol acetaminophen metformin
    insulin vanguard fidelity schwab roth ira nvidia tesla apple google microsoft meta
    facebook instagram whatsapp tiktok twitter linkedin youtube reddit quora usa uk eu
    china india japan canada mexico brazil germany france spain italy portugal russia
    australia thailand vietnam kenya peru egypt turkey greece ireland norway sweden
    london paris rome lisbon porto madrid barcelona berlin munich hamburg dublin prague
    vienna amsterdam boston chicago seattle denver tokyo bali doha dubai""".split()
)
# Spellings of the same name ("js" is "javascript").
ALIASES: dict[str, str] = {
    "js": "javascript",
    "ts": "typescript",
    "go": "golang",
    "postgresql": "postgres",
    "psql": "postgres",
    "nodejs": "node",
    "k8s": "kubernetes",
    "osx": "macos",
    "us": "usa",
    "america": "usa",
    "american": "usa",
    "unitedstates": "usa",
    "britain": "uk",
    "british": "uk",
    "england": "uk",
    "u.s": "usa",
    "u.s.a": "usa",
    "u.k": "uk",
}
# Name suffixes that do not change what is named ("React.js" is "React").
NAME_SUFFIXES: tuple[str, ...] = (".js", ".com", ".io", ".org", ".net", ".app")

# What a question asks for. Two sides asking for different things ("why" vs "how many") need
# different answers; generic openers ("what", "how", "which", "is") are not compared.
FOCUS_OPENERS: dict[tuple[str, ...], str] = {
    ("why",): "reason",
    ("how", "come"): "reason",
    ("how", "many"): "amount",
    ("how", "much"): "amount",
    ("how", "long"): "duration",
    ("how", "often"): "frequency",
    ("when",): "time",
    ("what", "time"): "time",
    ("where",): "place",
    ("who",): "person",
    ("whom",): "person",
    ("whose",): "person",
}

# Words that may replace each other in an otherwise identical question (the `edit` check):
# one group per line, "_" joins the words of a phrase. Kept to everyday requests and support
# and software vocabulary; a replacement outside these groups (and not an inflection or a
# typo) refuses a hit when it is the only difference between two questions.
_SYNONYMS_TEXT = """
delete remove erase wipe
change modify alter update edit amend
fix repair solve resolve correct troubleshoot
fast quick quickly speedy rapid rapidly
enable activate turn_on switch_on
disable deactivate turn_off switch_off
set_up configure setup
arrive get_to reach
symptom symptoms sign signs
package parcel
with using via
dictionary dict
dictionaries dicts
link connect
fastest quickest speediest
faster quicker
big large huge
biggest largest
small little tiny
smallest tiniest
easy simple straightforward
easiest simplest
hard difficult tough
buy purchase
get obtain acquire receive
start begin launch
stop halt end terminate kill
show display view see list
make create build generate produce
choose pick select
combine merge join
improve enhance better boost
reduce lower decrease cut shrink
increase raise boost grow
check verify confirm validate test
find locate search
error failure issue problem bug
benefit benefits advantage advantages pro pros
drawback drawbacks disadvantage disadvantages con cons downside downsides
use utilize utilise employ
help assist support
need require want
way method approach technique
ways methods approaches techniques
give grant provide
send email mail
swap exchange switch
idea concept
job role position
purpose point goal aim
explain describe
docs documentation
app application
repo repository
config configuration settings
info information details
pic picture photo image
"""
SYNONYM_GROUPS: dict[str, frozenset[int]] = {}
for _index, _line in enumerate(_SYNONYMS_TEXT.strip().splitlines()):
    for _word in (w.replace("_", " ") for w in _line.split()):
        SYNONYM_GROUPS[_word] = SYNONYM_GROUPS.get(_word, frozenset()) | {_index}
