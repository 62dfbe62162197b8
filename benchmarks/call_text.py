"""What the synthetic call-centre calls say: a phrase bank and a seeded dialogue planner.

The planner decides every word, pause and overlap of a call before any audio exists, so the
size of the whole evaluation set is known without synthesising it (``benchmarks.calls`` turns
the plans into audio). References are plain English words only: numbers are written as words
that espeak-ng reads as written and Whisper's English normaliser turns into the same digits as
Whisper's own output ("four seven two" and "472" both normalise to "472"). Words that the
normaliser treats unevenly ("okay" vs "OK", "all right" vs "alright", fillers like "mm-hm")
are left out so that an error is an error of recognition, not of spelling.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

AGENT, CUSTOMER = 0, 1

#: Seconds per character at 1 word per minute, measured on espeak-ng 1.51 voices (trimmed audio).
SECONDS_PER_CHAR_WPM = 9.3

# names Whisper spells one way: "Bluebell" and "Northwind" came back as "Blue Mel" and "North Wind"
COMPANIES = ["Summit Energy", "Central Mobile", "Harbor Bank", "Pioneer Insurance", "Greenfield Water"]
AGENT_NAMES = ["David", "Sarah", "Michael", "Emma", "James", "Laura", "Daniel", "Rachel", "Peter", "Anna"]
FIRST_NAMES = ["Helen", "Thomas", "Susan", "Robert", "Karen", "Paul", "Linda", "George", "Nancy", "Frank"]
LAST_NAMES = ["Walker", "Carter", "Wright", "Green", "Hill", "Baker", "Turner", "Cooper", "Morgan", "Parker"]
STREETS = ["Maple Street", "Oak Avenue", "Church Road", "Station Road", "River Lane", "Park Drive", "Mill Street"]
TOWNS = ["Springfield", "Riverside", "Oakwood", "Brookfield", "Fairview", "Lakewood"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]
ORDINALS += ["eleventh", "twelfth", "fifteenth", "eighteenth", "twentieth", "twenty third", "twenty eighth"]
TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
PRODUCTS = [
    "the Home Fiber package",
    "the Unlimited Talk plan",
    "the smart meter",
    "the Premium Saver account",
    "the Family Mobile bundle",
    "the travel insurance policy",
    "the online banking app",
    "the monthly payment plan",
]
PROBLEMS = [
    "my internet keeps dropping out every evening",
    "I was charged twice for the same bill",
    "the smart meter stopped sending readings",
    "my card was declined at the supermarket yesterday",
    "I never received the letter you said you would send",
    "the app will not let me sign in at all",
    "my last bill is much higher than usual",
    "the engineer did not turn up for the appointment",
    "I moved house and the account still has my old address",
    "the direct debit was taken on the wrong day",
    "I have no signal in my kitchen or my living room",
    "the refund you promised has not arrived",
]
DETAILS = [
    "It started about two weeks ago and it has been getting worse.",
    "I have already tried switching it off and on again.",
    "My neighbour has the same problem, so I think it is not just me.",
    "I called last week and was told it would be sorted within three days.",
    "It usually happens in the evening when everyone is at home.",
    "I checked my bank statement this morning and the money has gone out.",
    "To be honest I am quite frustrated, because this is the third time.",
    "I need it working for my job, I work from home most days.",
    "The message on the screen just says there was an error.",
    "Nobody told me the price was going to change.",
]
QUESTIONS = [
    "When did you first notice the problem?",
    "Have you made any changes to the account recently?",
    "Is this happening on every device or just one?",
    "Did you receive an email from us about this?",
    "Can you tell me what the message on the screen says?",
    "Would you be happy for me to run a quick test on the line?",
    "Are you calling from the number on the account?",
    "Do you still have the reference number from your last call?",
]
ANSWERS = [
    "Yes, that is right.",
    "No, I have not changed anything at all.",
    "I think it was the week before last.",
    "It is on every device in the house.",
    "I did get an email, but it did not explain very much.",
    "Yes, please go ahead.",
    "I am not sure, I would have to check.",
    "Yes, this is the number on the account.",
]
CHECKS = [
    "Let me just have a look at that for you.",
    "Bear with me one moment while I check the system.",
    "I am just bringing up your account now.",
    "Thank you for waiting, I can see what has happened.",
    "I can see the notes from your last call here.",
]
RESOLUTIONS = [
    "I have reset the connection from our side, so it should be stable from tonight.",
    "I have raised a refund of {amount}, which should reach your account within five working days.",
    "I have booked an engineer for {date}, between eight in the morning and one in the afternoon.",
    "I have updated the address on the account to {address}.",
    "I have removed the second charge, and your next bill will show the correction.",
    "I have sent a new letter to your home address, it should arrive by {date}.",
    "I have moved the payment date to the {ordinal} of each month, as you asked.",
    "I have added a credit of {amount} to say sorry for the trouble.",
]
BACKCHANNELS = ["Right.", "Yes.", "I see.", "Sure.", "Great.", "Thank you.", "Yes, I understand."]


@dataclass(frozen=True)
class PlannedTurn:
    """One turn before synthesis: its phrases, the pauses inside it, and what overlaps it.

    ``gap`` is the silence before the turn, from the end of the previous turn (negative: the
    turn starts that much before the other party finished). ``backchannel`` is
    ``(after_piece, text, lead)``: the other party says ``text`` starting ``lead`` seconds before
    piece ``after_piece`` ends. ``clip`` names a real recording spoken instead of a voice.
    """

    speaker: int
    pieces: tuple[str, ...]
    gap: float
    pauses: tuple[float, ...] = ()
    backchannel: tuple[int, str, float] | None = None
    clip: str | None = None


def estimate_seconds(text: str, wpm: int) -> float:
    """Spoken length of ``text`` at ``wpm`` (espeak-ng's speed), from its length in characters."""
    return SECONDS_PER_CHAR_WPM * len(text) / wpm + 0.05


def number_words(rng: random.Random, digits: int) -> str:
    """An account or reference number spelled digit by digit ("four seven two nine")."""
    return " ".join(rng.choice(DIGITS[1:] if i == 0 else DIGITS) for i in range(digits))


def amount_words(rng: random.Random) -> str:
    return f"{rng.choice(TENS)} {rng.choice(DIGITS[1:])} dollars"


def date_words(rng: random.Random) -> str:
    return f"the {rng.choice(ORDINALS)} of {rng.choice(MONTHS)}"


def address_words(rng: random.Random) -> str:
    return f"{rng.choice(TENS)} {rng.choice(DIGITS[1:])} {rng.choice(STREETS)}, {rng.choice(TOWNS)}"


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


class DialogueWriter:
    """Writes one call's turns, in order, with seeded choices of words, pauses and overlaps."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        r = self.rng
        self.company = r.choice(COMPANIES)
        self.agent = r.choice(AGENT_NAMES)
        self.customer = f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}"
        self.account = number_words(r, 8)
        self.turns: list[PlannedTurn] = []
        self.recent: list[str] = []

    def pick(self, options: list[str]) -> str:
        """A seeded choice that avoids the last few picks, so that a call does not repeat itself."""
        fresh = [o for o in options if o not in self.recent] or options
        choice = self.rng.choice(fresh)
        self.recent = [*self.recent[-11:], choice]
        return choice

    def fill(self, template: str) -> str:
        r = self.rng
        return template.format(
            amount=amount_words(r), date=date_words(r), address=address_words(r), ordinal=r.choice(ORDINALS)
        )

    def say(self, speaker: int, *pieces: str) -> None:
        """Add a turn; a long one may get a back-channel, and a few turns barge in early."""
        r = self.rng
        pieces = tuple(_capitalised(self.fill(p)) for p in pieces)
        # short intra-turn pauses: under any sensible end-of-utterance threshold
        pauses = tuple(round(r.uniform(0.25, 0.35), 3) for _ in pieces[1:])
        gap = round(r.uniform(0.4, 1.2), 3)
        if self.turns and self.turns[-1].speaker != speaker and r.random() < 0.08:
            gap = -round(r.uniform(0.15, 0.4), 3)  # interrupts the end of the other party's turn
        backchannel = None
        if len(pieces) > 1 and r.random() < 0.4:
            backchannel = (r.randrange(len(pieces) - 1), r.choice(BACKCHANNELS), round(r.uniform(0.0, 0.25), 3))
        self.turns.append(PlannedTurn(speaker, pieces, 0.6 if not self.turns else gap, pauses, backchannel))

    def clip(self, file: str, reference: str) -> None:
        """A real recording as one customer turn (the real-speech check inside a call)."""
        self.turns.append(PlannedTurn(CUSTOMER, (reference,), round(self.rng.uniform(0.5, 1.0), 3), clip=file))

    # -- the parts of a call -------------------------------------------------------------

    def opening(self) -> None:
        self.say(
            AGENT,
            f"Good morning, thank you for calling {self.company}.",
            f"My name is {self.agent}, how can I help you today?",
        )
        self.say(
            CUSTOMER, f"Hello {self.agent}, my name is {self.customer}.", f"I am calling because {self.problem()}."
        )

    def verification(self) -> None:
        r = self.rng
        self.say(AGENT, "I am sorry to hear that.", "Could I take your account number, please?")
        self.say(CUSTOMER, f"Yes, it is {self.account}.")
        self.say(AGENT, "Thank you.", "And can you confirm your date of birth for me?")
        self.say(CUSTOMER, f"It is {date_words(r)}, nineteen {r.choice(TENS[3:])} {r.choice(DIGITS[1:])}.")
        self.say(AGENT, "And which street do you live on?")
        self.say(CUSTOMER, f"{address_words(r)}.")
        self.say(AGENT, f"Thank you {self.customer.split()[0]}, that is all confirmed.")

    def exchange(self) -> None:
        """One question and answer about the problem: the filler that gives a call its length."""
        r = self.rng
        kind = r.random()
        if kind < 0.35:
            self.say(AGENT, self.pick(QUESTIONS))
            self.say(CUSTOMER, self.pick(ANSWERS), self.pick(DETAILS))
        elif kind < 0.6:
            self.say(AGENT, self.pick(CHECKS))
            self.say(CUSTOMER, r.choice(["Thank you.", "No problem.", "Sure, take your time."]))
            self.say(AGENT, self.fill(self.pick(RESOLUTIONS)), "Is that fine with you?")
            self.say(CUSTOMER, r.choice(["Yes, that would be great.", "That sounds fine.", "Yes, thank you."]))
        elif kind < 0.8:
            product = self.pick(PRODUCTS)
            self.say(CUSTOMER, f"While I have you, I also wanted to ask about {product}.")
            self.say(AGENT, "Of course.", f"What would you like to know about {product}?")
            self.say(CUSTOMER, "How much would it cost me each month?")
            self.say(AGENT, f"It would be {amount_words(r)} a month, for the first twelve months.")
        else:
            self.say(CUSTOMER, f"There is one more thing, {self.problem()}.", self.pick(DETAILS))
            self.say(AGENT, "I understand, let me sort that out for you as well.")

    def problem(self) -> str:
        return self.pick(PROBLEMS)

    def closing(self) -> None:
        r = self.rng
        self.say(AGENT, f"Your reference number for today is {number_words(r, 6)}.")
        self.say(AGENT, "Is there anything else I can help you with today?")
        self.say(CUSTOMER, "No, nothing else today.", "Thank you for your help.")
        self.say(AGENT, f"You are welcome, thank you for calling {self.company}, have a lovely day.")
        self.say(CUSTOMER, "Thanks, you too.")


def turn_seconds(turn: PlannedTurn, wpm: tuple[int, int], clip_seconds: dict[str, float]) -> float:
    """Estimated length of a turn including the pause before it."""
    if turn.clip:
        return max(turn.gap, 0.0) + clip_seconds.get(turn.clip, 5.0)
    speech = sum(estimate_seconds(p, wpm[turn.speaker]) for p in turn.pieces)
    return max(turn.gap, 0.0) + speech + sum(turn.pauses)


def plan_dialogue(
    seed: int,
    target_seconds: float,
    wpm: tuple[int, int],
    clips: tuple[tuple[str, str, float], ...] = (),
) -> list[PlannedTurn]:
    """The turns of a call of about ``target_seconds``: opening, verification (if there is
    time), exchanges until the estimate reaches the target less the closing, then the closing.

    ``clips`` are ``(file, reference, seconds)`` of real recordings, spread over the middle.
    """
    w = DialogueWriter(seed)
    clip_seconds = {f: s for f, _, s in clips}

    def used() -> float:
        return sum(turn_seconds(t, wpm, clip_seconds) for t in w.turns)

    closing_estimate = 20.0 * 150 / min(wpm)
    w.opening()
    if target_seconds >= 45:
        w.verification()
    pending = list(clips)
    exchanges = 0
    while used() < target_seconds - closing_estimate:
        if pending and exchanges % 4 == 2:
            file, reference, _ = pending.pop(0)
            w.say(AGENT, "Could you read me the note you wrote down, please?")
            w.clip(file, reference)
        w.exchange()
        exchanges += 1
    w.closing()
    return w.turns
