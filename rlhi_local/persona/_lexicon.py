"""Word lists the persona miners match against: jobs, systems, skills, topics and style phrases.

Closed lists on purpose: a fact is only mined when what the user said names something on a list,
because a wrong fact in the system prompt costs more than a missing one. Every foreign word maps to
the English name the card shows, so "je suis infirmière" and "I'm a nurse" give one key.
"""

from __future__ import annotations

import re
from typing import Final

# -- jobs: surface form -> canonical key (English) --------------------------------------------

JOBS_EN: Final = (
    "nurse", "nurse practitioner", "doctor", "physician", "surgeon", "pharmacist", "dentist",
    "paramedic", "midwife", "therapist", "physiotherapist", "psychologist", "psychiatrist",
    "teacher", "professor", "lecturer", "tutor", "student", "phd student", "grad student",
    "researcher", "scientist", "engineer", "software engineer", "developer", "programmer",
    "data scientist", "data analyst", "analyst", "designer", "architect", "lawyer", "attorney",
    "paralegal", "accountant", "bookkeeper", "consultant", "manager", "product manager",
    "project manager", "marketer", "writer", "journalist", "editor", "author", "translator",
    "artist", "photographer", "musician", "chef", "baker", "farmer", "electrician",
    "plumber", "carpenter", "mechanic", "pilot", "firefighter", "police officer", "soldier",
    "veterinarian", "vet", "librarian", "social worker", "cashier", "salesperson", "entrepreneur",
    "founder", "freelancer", "sysadmin", "web developer", "game developer", "receptionist",
    "caregiver", "homemaker", "stay-at-home mom", "stay-at-home dad", "stay-at-home parent",
    "economist", "mathematician", "physicist", "chemist", "biologist", "statistician",
    "real estate agent", "recruiter", "hairdresser", "barista", "waiter", "waitress", "dev",
)
JOB_KEY: Final = {
    "nurse practitioner": "nurse", "physician": "doctor", "phd student": "student",
    "grad student": "student", "software engineer": "engineer", "programmer": "developer",
    "dev": "developer", "web developer": "developer", "game developer": "developer",
    "attorney": "lawyer", "vet": "veterinarian", "waitress": "waiter",
    "stay-at-home mom": "stay-at-home parent", "stay-at-home dad": "stay-at-home parent",
}
JOBS_FOREIGN: Final = {
    # French
    "infirmier": "nurse", "infirmière": "nurse", "médecin": "doctor", "professeur": "teacher",
    "professeure": "teacher", "prof": "teacher", "enseignant": "teacher", "enseignante": "teacher",
    "étudiant": "student", "étudiante": "student", "ingénieur": "engineer", "ingénieure": "engineer",
    "développeur": "developer", "développeuse": "developer", "avocat": "lawyer", "avocate": "lawyer",
    "comptable": "accountant", "pharmacien": "pharmacist", "pharmacienne": "pharmacist",
    "cuisinier": "chef", "cuisinière": "chef", "graphiste": "designer", "journaliste": "journalist",
    "retraité": "retired", "retraitée": "retired",
    # German
    "krankenpfleger": "nurse", "krankenpflegerin": "nurse", "krankenschwester": "nurse",
    "pflegekraft": "nurse", "arzt": "doctor", "ärztin": "doctor", "lehrer": "teacher",
    "lehrerin": "teacher", "student": "student", "studentin": "student", "ingenieur": "engineer",
    "ingenieurin": "engineer", "entwickler": "developer", "entwicklerin": "developer",
    "softwareentwickler": "developer", "softwareentwicklerin": "developer",
    "programmierer": "developer", "programmiererin": "developer", "anwalt": "lawyer",
    "anwältin": "lawyer", "buchhalter": "accountant", "buchhalterin": "accountant",
    "apotheker": "pharmacist", "apothekerin": "pharmacist", "koch": "chef", "köchin": "chef",
    "rentner": "retired", "rentnerin": "retired", "designerin": "designer",
    "journalistin": "journalist",
    # Spanish
    "enfermero": "nurse", "enfermera": "nurse", "médico": "doctor", "médica": "doctor",
    "doctora": "doctor", "profesor": "teacher", "profesora": "teacher", "maestro": "teacher",
    "maestra": "teacher", "estudiante": "student", "ingeniero": "engineer", "ingeniera": "engineer",
    "desarrollador": "developer", "desarrolladora": "developer", "programador": "developer",
    "programadora": "developer", "abogado": "lawyer", "abogada": "lawyer", "contador": "accountant",
    "contadora": "accountant", "contable": "accountant", "farmacéutico": "pharmacist",
    "farmacéutica": "pharmacist", "cocinero": "chef", "cocinera": "chef", "jubilado": "retired",
    "jubilada": "retired", "diseñador": "designer", "diseñadora": "designer",
    "periodista": "journalist",
}
JOB_MODIFIER_BLOCK: Final = frozenset({
    "former", "ex", "ex-", "aspiring", "future", "wannabe", "would-be", "fake", "pretend", "bad",
    "terrible", "bit", "lot", "huge", "big", "fan", "not", "no", "kind", "sort", "type", "like",
    "fictional", "virtual", "good", "great", "decent", "awful", "amazing", "better", "worse", "okay",
    "ok", "horrible", "natural", "born", "amateur", "hobby", "hobbyist", "weekend", "pretty", "wannabe",
    "lousy", "lazy", "proud",
})
"""A job after one of these is not the user's current job ("a former nurse", "a bit of a chef")."""
JOB_NEXT_BLOCK: Final = frozenset({
    "fan", "friend", "aide", "assistant", "joke", "costume", "character", "role", "show", "series",
    "game", "'s", "’s", "s", "kit", "uniform", "outfit", "mode",
})
"""A job word followed by one of these names something else ("a nurse costume", "a chef's knife")."""

# -- computers and phones ----------------------------------------------------------------------

OS: Final = {
    "windows": "Windows", "windows 10": "Windows", "windows 11": "Windows", "win11": "Windows",
    "win10": "Windows", "macos": "macOS", "mac os": "macOS", "os x": "macOS", "osx": "macOS",
    "mac": "macOS", "macbook": "macOS", "macbook pro": "macOS", "macbook air": "macOS", "imac": "macOS",
    "linux": "Linux", "ubuntu": "Ubuntu", "debian": "Debian", "fedora": "Fedora",
    "arch": "Arch Linux", "arch linux": "Arch Linux", "linux mint": "Linux Mint", "mint": "Linux Mint",
    "pop!_os": "Pop!_OS", "chromeos": "ChromeOS", "chromebook": "ChromeOS", "wsl": "Windows",
}
PHONES: Final = {"iphone": "an iPhone", "android phone": "an Android phone", "android": "an Android phone",
                 "pixel": "an Android phone", "ipad": "an iPad"}

# -- skills: what someone learns, is new to, or is experienced with -------------------------------

SKILLS: Final = {
    **{k: k.capitalize() for k in (
        "python", "rust", "java", "kotlin", "swift", "ruby", "php", "haskell", "scala", "elixir",
        "julia", "lua", "dart", "zig", "ocaml", "perl", "bash", "django", "flask", "rails",
        "pandas", "numpy", "docker", "kubernetes", "terraform", "linux", "excel", "english",
        "french", "german", "spanish", "italian", "portuguese", "japanese", "chinese", "mandarin",
        "korean", "russian", "arabic", "dutch", "swedish", "hindi", "polish", "turkish", "greek",
        "guitar", "piano", "violin", "drums", "ukulele", "cello", "saxophone", "calculus",
        "statistics", "physics", "chemistry", "biology", "economics", "accounting", "photography",
        "chess", "cooking", "baking", "knitting", "drawing", "painting", "programming", "coding",
        "go", "golang", "angular", "vue", "react", "svelte", "git", "vim", "emacs", "blender",
        "unity", "photoshop", "figma", "matlab",
    )},
    "javascript": "JavaScript", "typescript": "TypeScript", "c++": "C++", "c#": "C#", "sql": "SQL",
    "html": "HTML", "css": "CSS", "fastapi": "FastAPI", "node": "Node.js", "node.js": "Node.js",
    "nodejs": "Node.js", "pytorch": "PyTorch", "tensorflow": "TensorFlow", "power bi": "Power BI",
    "linear algebra": "linear algebra", "machine learning": "machine learning",
    "deep learning": "deep learning", "data science": "data science", "web development": "web development",
    "golang": "Go",
    # French / German / Spanish names of languages and a few subjects
    "anglais": "English", "français": "French", "allemand": "German", "espagnol": "Spanish",
    "italien": "Italian", "japonais": "Japanese", "chinois": "Chinese", "la programmation": "programming",
    "englisch": "English", "französisch": "French", "deutsch": "German", "spanisch": "Spanish",
    "italienisch": "Italian", "japanisch": "Japanese", "programmieren": "programming",
    "inglés": "English", "francés": "French", "alemán": "German", "español": "Spanish",
    "italiano": "Italian", "japonés": "Japanese", "programar": "programming", "programación": "programming",
    "gitarre": "guitar", "guitarra": "guitar", "guitare": "guitar", "klavier": "piano",
}
NATURAL_LANGUAGES: Final = frozenset({
    "English", "French", "German", "Spanish", "Italian", "Portuguese", "Japanese", "Chinese",
    "Mandarin", "Korean", "Russian", "Arabic", "Dutch", "Swedish", "Hindi", "Polish", "Turkish", "Greek",
})
LEARN_TO: Final = {
    "code": "to code", "program": "to code", "cook": "to cook", "bake": "to bake", "swim": "to swim",
    "drive": "to drive", "knit": "to knit", "sew": "to sew", "draw": "to draw", "paint": "to paint",
    "play guitar": "guitar", "play the guitar": "guitar", "play piano": "piano",
    "play the piano": "piano", "play chess": "chess", "play the violin": "violin", "ski": "to ski",
}


def alternation(words: object) -> str:
    """A regex alternation of `words`, longest first so "macbook pro" wins over "mac"."""
    return "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))  # type: ignore[attr-defined]


# -- style: preference key -> (text for the card, text when negated or None) ----------------------

PREFERENCES: Final = {
    "concise": "Prefers concise answers",
    "detailed": "Prefers detailed, thorough answers",
    "simple": "Prefers simple explanations without jargon",
    "bullets": "Prefers bullet points and lists",
    "no_bullets": "Prefers prose to bullet points",
    "tables": "Likes tables for comparisons",
    "no_emojis": "No emojis",
    "emojis": "Likes emojis",
    "no_hashtags": "No hashtags",
    "casual": "Prefers a casual, friendly tone",
    "formal": "Prefers a formal, professional tone",
    "examples": "Likes concrete examples",
    "code_comments": "Wants comments in code",
    "type_hints": "Wants type hints in Python code",
    "docstrings": "Wants docstrings in code",
    "python3": "Wants Python 3 code",
    "step_by_step": "Likes step-by-step instructions",
    "metric": "Uses metric units",
    "imperial": "Uses imperial units",
}

# A follow-up instruction component from the detector (`feedback._instruction`) -> preference key.
INSTRUCTION_KEYS: Final[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
    (re.compile(p), k) for p, k in (
        (r"^(?:shorter|more concise|key points only|one sentence|two sentence|one paragraph"
         r"|under \d+ (?:words|lines))$", "concise"),
        (r"^(?:longer|more detail)$", "detailed"),
        (r"^(?:simpler|for a child|less jargon)$", "simple"),
        (r"^(?:use bullet points|as a list|as a numbered list)$", "bullets"),
        (r"^as a table$", "tables"),
        (r"^less emojis?$", "no_emojis"),
        (r"^less hashtags?$", "no_hashtags"),
        (r"^less formal$", "casual"),
        (r"^more professional$", "formal"),
        (r"^add an example$", "examples"),
        (r"^add comments$", "code_comments"),
        (r"^add type hints$", "type_hints"),
        (r"^add a docstring$", "docstrings"),
        (r"^use python 3$", "python3"),
    )
)

# Explicit statements: (pattern, positive key, key when negated or None).
STYLE_WORDS: Final[tuple[tuple[re.Pattern[str], str, str | None], ...]] = tuple(
    (re.compile(p, re.IGNORECASE), pos, neg) for p, pos, neg in (
        (r"\b(?:short|shorter|brief|concise|succinct|to the point|terse|kurz|kurze|knapp|knappe"
         r"|court|courte|courtes|courts|concis|concise|corto|corta|cortas|cortos|breve|breves"
         r"|conciso|concisa)\b", "concise", "detailed"),
        (r"\b(?:long|lengthy|detailed|thorough|in-depth|in depth|verbose|wordy|ausführlich"
         r"|détaillé|détaillée|détaillées|detallado|detallada|detalladas)\b", "detailed", "concise"),
        (r"\b(?:jargon|simple words|plain english|plain language|simply|simple explanations?)\b",
         "simple", None),
        (r"\b(?:bullet points?|bullets|bullet lists?|lists|listes? à puces|puces|stichpunkte"
         r"|aufzählungen|viñetas)\b", "bullets", "no_bullets"),
        (r"\b(?:tables|tableaux|tabellen|tablas)\b", "tables", None),
        (r"\b(?:emojis?|emoticons?|émojis?|smileys?)\b", "emojis", "no_emojis"),
        (r"\bhashtags?\b", "no_hashtags", "no_hashtags"),
        (r"\b(?:casual|informal|relaxed tone|friendly tone|tutoie|duzen|tutea)\b", "casual", None),
        (r"\b(?:formal|professional tone|vouvoie|siezen)\b", "formal", "casual"),
        (r"\b(?:examples|exemples|beispiele|ejemplos)\b", "examples", None),
        (r"\b(?:comments in (?:the |my |your )?code|code comments|commented code)\b", "code_comments", None),
        (r"\btype hints?\b", "type_hints", None),
        (r"\bdocstrings?\b", "docstrings", None),
        (r"\bpython ?3\b", "python3", None),
        (r"\bstep[- ]by[- ]step\b", "step_by_step", None),
        (r"\b(?:metric(?: units| system)?|celsius|kilograms|kilometers|kilometres)\b", "metric", None),
        (r"\b(?:imperial(?: units)?|fahrenheit|pounds and ounces|miles and feet)\b", "imperial", None),
    )
)
NEGATORS: Final = re.compile(
    r"\b(?:no|not|never|without|don'?t|do not|doesn'?t|stop|avoid|hate|dislike|can'?t stand"
    r"|less|fewer|nor|none|sans|pas|jamais|ni|kein|keine|keinen|ohne|nie|nicht|sin|nunca|ningún"
    r"|ninguna|ni)\b|n't\b|\bpas d[e'’]",
    re.IGNORECASE,
)
ANSWER_LANGUAGES: Final = {
    "english": "English", "french": "French", "german": "German", "spanish": "Spanish",
    "italian": "Italian", "portuguese": "Portuguese", "dutch": "Dutch", "français": "French",
    "anglais": "English", "allemand": "German", "espagnol": "Spanish", "deutsch": "German",
    "englisch": "English", "französisch": "French", "spanisch": "Spanish", "español": "Spanish",
    "inglés": "English", "francés": "French", "alemán": "German",
}

# -- topics: key -> (display, pattern over the user's own words) -----------------------------------

TOPICS: Final[dict[str, tuple[str, re.Pattern[str]]]] = {
    k: (name, re.compile(p, re.IGNORECASE)) for k, name, p in (
        ("python", "Python", r"\b(?:python|pandas|numpy|django|flask|fastapi|pytest|pip install|venv)\b"),
        ("javascript", "JavaScript/TypeScript", r"\b(?:javascript|typescript|node\.?js|npm|react|vue|angular|svelte)\b"),
        ("rust", "Rust", r"\b(?:rust (?:code|program|function|crate|compiler|project)|in rust|cargo build|cargo run|borrow checker|rustc)\b"),
        ("go", "Go", r"\b(?:golang|goroutines?|go modules?|in go\b(?= code| program))"),
        ("java", "Java", r"\b(?:java(?!script)|spring boot|maven|gradle)\b"),
        ("cpp", "C/C++", r"(?:\bc\+\+|\bcpp\b|\bin c\b|\bc program)"),
        ("sql", "SQL and databases", r"\b(?:sql|postgres(?:ql)?|mysql|sqlite|database|databases)\b"),
        ("git", "Git", r"\b(?:git|github|gitlab|rebase|merge conflict)\b"),
        ("shell", "Linux and the shell", r"\b(?:bash|shell script|terminal|command line|linux|ubuntu|systemd|cron)\b"),
        ("containers", "Docker and Kubernetes", r"\b(?:docker|kubernetes|kubectl|k8s|helm chart|container image)\b"),
        ("web", "web development", r"\b(?:html|css|frontend|front-end|backend|back-end|website|web app)\b"),
        ("spreadsheets", "spreadsheets", r"\b(?:excel|spreadsheets?|google sheets|vlookup|xlookup|pivot tables?)\b"),
        ("ml", "machine learning", r"\b(?:machine learning|neural net(?:work)?s?|deep learning|fine-?tun\w*|llms?|pytorch|tensorflow)\b"),
        ("math", "math", r"\b(?:equation|algebra|calculus|integral|derivative|probability|geometry|theorem|matrix|matrices)\b"),
        ("history", "history", r"\b(?:history|historical|world war|revolution|empire|medieval|ancient)\b"),
        ("cooking", "cooking", r"\b(?:recipes?|cook|cooking|bake|baking|oven|dinner|sauce|ingredients|marinade)\b"),
        ("fitness", "fitness and training", r"\b(?:workouts?|gym|marathon|half marathon|running plan|training plan|squats?|deadlifts?|5k|10k)\b"),
        ("nutrition", "nutrition", r"\b(?:calories|protein|macros|meal prep|nutrition|diet)\b"),
        ("health", "health and medicine", r"\b(?:symptoms?|medications?|dosage|dose|blood pressure|patients?|diagnosis)\b"),
        ("parenting", "parenting", r"\b(?:parenting|toddler|bedtime|my (?:kids?|son|daughter|children)|homework help)\b"),
        ("travel", "travel", r"\b(?:trip|itinerary|flights?|hotel|vacation|holiday|travel(?:ling|ing)?)\b"),
        ("finance", "personal finance", r"\b(?:budget|budgeting|savings|invest(?:ing|ment)?|stocks?|mortgage|taxes|401k|roth|etfs?|index funds?)\b"),
        ("career", "career and job search", r"\b(?:resume|résumé|cv|cover letter|job interview|job application|linkedin|salary negotiation)\b"),
        ("writing", "writing", r"\b(?:essay|blog post|short story|poem|novel|article|manuscript)\b"),
        ("email", "emails and messages", r"\b(?:e-?mail to|an e-?mail|reply to my|message to my)\b"),
        ("gardening", "gardening", r"\b(?:garden|gardening|tomato plants?|soil|seedlings?|compost|pruning|houseplants?)\b"),
        ("diy", "home repair and DIY", r"\b(?:diy|drywall|plumbing|leaky|faucet|drill|renovat\w+)\b"),
        ("music", "music", r"\b(?:guitar|piano|chords?|song ?writing|music theory|melody)\b"),
        ("photography", "photography", r"\b(?:photography|aperture|shutter speed|lightroom|iso setting|camera settings)\b"),
        ("gaming", "video games", r"\b(?:video games?|minecraft|steam deck|ps5|xbox|nintendo|elden ring)\b"),
        ("pets", "pets", r"\b(?:my (?:dog|cat|puppy|kitten)|vet visit|dog food|cat food|litter box)\b"),
        ("languages", "language learning", r"\b(?:vocabulary|grammar|conjugat\w+|translate|translation)\b"),
        ("legal", "legal questions", r"\b(?:lease|landlord|tenant|contract clause|lawsuit|legal advice)\b"),
        ("cars", "cars", r"\b(?:my car|oil change|tires|brakes|engine light|mileage)\b"),
        ("mental_health", "stress and wellbeing", r"\b(?:anxiety|stress(?:ed)?|burnout|therapy|meditation|insomnia)\b"),
    )
}

# -- vocabulary that marks a practitioner (expertise by vocabulary) ---------------------------------

JARGON: Final[dict[str, tuple[str, re.Pattern[str]]]] = {
    k: (name, re.compile(p, re.IGNORECASE)) for k, name, p in (
        ("programming", "programming", r"\b(?:stack trace|refactor\w*|dependency injection|race conditions?"
         r"|mutex(?:es)?|deadlocks?|idempoten\w+|memoi[sz]\w+|closures?|monads?|generics|type inference"
         r"|borrow checker|garbage collect\w*|big-?o|time complexity|linked lists?|hash ?maps?"
         r"|async/await|event loop|coroutines?|thread pool|orm|ci/cd|microservices?|graphql|segfaults?"
         r"|null pointer|linters?|unit tests?|regex(?:es)?|seriali[sz]\w+|polymorphism|pull requests?"
         r"|cherry-pick|merge conflicts?|rebase|dockerfile|lambdas?|callbacks?|api endpoints?)\b"),
        ("medicine", "medicine", r"\b(?:tachycardi\w*|bradycardi\w*|hypertensi\w+|hypotensi\w+|contraindicat\w+"
         r"|pharmacokinetic\w*|differential diagnosis|prn|iv push|titrat\w+|sepsis|septic|myocardial"
         r"|mg/kg|triage|comorbidit\w+|etiology|prognosis|subcutaneous\w*|intramuscular\w*"
         r"|anticoagula\w+|creatinine|a1c|ecg|ekg|bolus|infusion rate|drip rate)\b"),
        ("finance", "finance", r"\b(?:amorti[sz]\w+|ebitda|p/e ratio|expense ratio|dividend yield|capital gains"
         r"|roth ira|basis points|yield curve|liquidity|hedging|discounted cash flow|dcf|npv|irr"
         r"|balance sheet|accruals?|cost basis|rebalanc\w+)\b"),
        ("law", "law", r"\b(?:tort|plaintiff|defendant|statute of limitations|jurisdiction|precedent"
         r"|stare decisis|habeas corpus|indemnif\w+|breach of contract|due diligence|subpoena"
         r"|affidavit|injunction)\b"),
        ("math", "mathematics", r"\b(?:eigenvalues?|eigenvectors?|hessian|jacobian|manifolds?|topolog\w+"
         r"|homomorphism|isomorphism|bayesian|posterior|p-values?|confidence intervals?|covariance"
         r"|stochastic|markov chains?|convexity|convex)\b"),
    )
}
