"""The cue phrases of each follow-up kind, in English, French, German and Spanish.

Each cue is a regular expression over the casefolded follow-up with a weight: how much it says
about the kind on its own. The weights were set by hand on `tests/data/followups_dev.jsonl`; the
held-out set never tuned them. Patterns are anchored on word boundaries and free of nested
quantifiers, so a pasted log of any length is matched in linear time.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["CUES", "Cue", "ERROR_LINE", "ERROR_HINT", "NEW_TOPIC", "ANAPHORA", "STOPWORDS"]

Cue = tuple["re.Pattern[str]", float]


def _cues(*pairs: tuple[str, float]) -> tuple[Cue, ...]:
    return tuple((re.compile(p, re.IGNORECASE), w) for p, w in pairs)


# A line that looks like a runtime or tool error: `TypeError: ...`, `error[E0432]: ...`,
# `E: Unable to locate package`, `Error from server (NotFound): ...`, `#N/A`.
ERROR_LINE: Final = re.compile(
    r"^\s*(?:(?i:fehler|erreur|error|getting this|it says|i get)\s*:?\s+)?(?P<error>[\w.]*(?:Error|Exception|Warning)(?:\[\w+\])?(?: from \w+(?: \(\w+\))?)?:.*"
    r"|error(?:\[\w+\])?:.*|E: .*|fatal: .*|panic: .*|Segmentation fault.*"
    r"|ERROR:? .*|npm ERR!.*|#(?:N/A|VALUE!|REF!|NAME\?|DIV/0!).*)$",
    re.MULTILINE,
)
# Words that say a pasted thing failed, with or without the error text.
ERROR_HINT: Final = re.compile(
    r"\b(?:traceback|throws?|threw|crash(?:es|ed)?|(?:does(?:n't| not)|won't|didn't) compile"
    r"|fails with|getting this|it says \w+error|i get (?:this|an? error)"
    r"|gives me|returns #|stack ?trace|exception|errno|segfault)\b|\b[a-z]+(?:Error|Exception)\b",
    re.IGNORECASE,
)
# Markers that the user changes the subject.
NEW_TOPIC: Final = re.compile(
    r"\b(?:unrelated|different question|another question|new question|other question|next,"
    r"|by the way|btw,|also,|off topic|changing (?:the )?subject|autre chose|autre question"
    r"|neue frage|andere frage|otra pregunta|otra cosa|cambiando de tema)\b",
    re.IGNORECASE,
)
# Openers that tie a question to the answer just given.
ANAPHORA: Final = re.compile(
    r"^(?:and|so|ok(?:ay)?,? and|now|then|what about|how about|but|also how|et|und|y|pero|mais|aber"
    r"|et si|y si|und wenn)\b"
    r"|\b(?:it|this|that|these|those|them|the (?:job|function|command|code|file|script|speech|recipe)"
    r"|ça|cela|le|la|les|das|davon|damit|es|eso|esto|lo|la)\b",
    re.IGNORECASE,
)

STOPWORDS: Final = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been it its this
    that these those i you he she we they me my your our their what which who whom how why when
    where do does did done can could would should will shall may might must not no yes so than
    then there here just also very too more most some any all each other into about over under
    up down out off again please pls thanks thank ok okay now get got have has had make made use
    un une le la les des du de et ou mais est sont je tu il elle nous vous ils pour dans sur avec
    pas plus ce cette ces qui que quoi comment der die das ein eine und oder ist sind ich du er sie
    wir ihr für mit auf nicht mehr wie was el la los las un una y o es son yo tú que para con en
    por no más como qué""".split()
)

CUES: Final[dict[str, tuple[Cue, ...]]] = {
    "rewrite_request": _cues(
        (r"\b(?:shorter|briefer|longer|simpler|concise|succinct|punchier|wordy|verbose)\b", 2.0),
        (r"\b(?:too (?:long|short|wordy|formal|informal|technical|complicated|vague|much text))\b", 2.0),
        (r"\b(?:more|less|fewer)\s+(?:\w+ly\s+)?(?:formal|casual|detail(?:ed|s)?|specific|concise|"
         r"professional|playful|friendly|polite|technical|jargon|emojis?|cheesy|wordy|simply|simple|"
         r"funny|stiff|examples?|context|depth|words|bullet)\b", 2.0),
        (r"\b(?:funnier|scarier|clearer|friendlier|warmer|sadder|happier|punchier|catchier|stronger)\b", 1.6),
        (r"\bmake (?:it|this|that|them|the \w+)\b", 1.4),
        (r"\b(?:rewrite|rephrase|reword|reformulate|shorten|summari[sz]e|simplify|condense|expand"
         r"|elaborate|tailor|redo this for|convert)\b", 1.8),
        (r"\b(?:bullet(?:s| points?| list)?|as a (?:table|list|code block|poem|haiku)|in a table"
         r"|put (?:it|that|this) in|format (?:it|that|this)|numbered list|markdown)\b", 2.0),
        (r"\b(?:in|to|with) (?:python ?3|typescript|javascript|rust|go|java|c\+\+|c#|english"
         r"|first person|third person|plain english|layman'?s terms|hooks)\b", 1.4),
        (r"\b(?:instead of a|instead\?*$)", 0.8),
        (r"\b(?:one|two|three|four|five|\d+) (?:sentences?|paragraphs?|lines?|words?|bullets?)\b", 1.5),
        (r"\b(?:under|at most|no more than|max(?:imum)?) \d+ (?:words|minutes?|sentences?|lines?|characters?)\b", 1.5),
        (r"\b(?:tl;?dr|eli5|explain (?:it )?like i'?m \w+)\b", 2.2),
        (r"\b(?:add|include) (?:type hints|comments?|docstrings?|an example|examples|tests|error handling|sources)\b", 2.0),
        (r"\b(?:give me an example|with an example|explain (?:each|every|what each) \w+|more detail"
         r"|keep it (?:simple|short|brief)|drop the|no hashtags|without the \w+)\b", 1.8),
        (r"\b(?:explain (?:it|this|that) (?:more )?(?:simply|clearly|again)|explain it more simply)\b", 1.8),
        (r"\b(?:just the (?:key points|code|answer|steps))\b", 1.8),
        # French
        (r"\b(?:plus (?:court|courte|simple|clair|détaillé|formel|long|longue)|moins (?:long|formel|technique)"
         r"|reformuler?|résume|simplifie|en anglais|en liste|en français)\b", 2.0),
        # German
        (r"\b(?:kürzer|einfacher|ausführlicher|länger|formeller|lockerer|mit kommentaren|effizienter"
         r"|auf englisch|als liste|zusammenfassen|umformulieren|fass(?:en)? (?:das|es) kürzer)\b", 2.0),
        # Spanish
        (r"\b(?:más (?:corto|corta|simple|sencillo|detalle|detallado|formal|largo)|menos (?:formal|largo)"
         r"|en (?:una )?lista|en inglés|resúmelo|simplifícalo|reescríbelo|con más detalle)\b", 2.0),
    ),
    "correction": _cues(
        (r"^(?:no|nope|nah|non|nein|incorrect|wrong|false)\b[,.!:;]?\s+(?:it'?s|it is|the|that'?s|you|c'est|es|la|le|es ist)\b", 1.6),
        (r"\b(?:that'?s|this is|it'?s|you'?re) (?:wrong|incorrect|not (?:right|correct|true|accurate))\b", 1.2),
        (r"\b(?:actually|in fact)\b", 0.9),
        (r"\bnot quite\b", 1.2),
        (r"\byou (?:forgot|missed|got \w+ wrong|need|have to|should(?:n't)?|mixed up|confused)\b", 1.2),
        (r"\b(?:should be|is supposed to be|needs to be|has to come|must be|the correct|is called)\b", 1.2),
        (r"\b(?:doesn'?t|does not|don'?t|isn'?t|aren'?t|didn'?t|wasn'?t) (?:have|include|need|split|match|contain|exist|mean|take|work like|accept)\b", 1.0),
        (r"\b\w+,? not \w+", 0.6),
        (r"\b(?:fix (?:that|this|it)|be precise|precise|careful,)\b", 1.0),
        (r"\b(?:c'est faux|ce n'est pas correct|pas \d+|précise)\b", 1.4),
        (r"\b(?:falsch|stimmt nicht|nicht richtig|keine primzahl|aber)\b", 1.0),
        (r"\b(?:no es (?:correcto|así|cierto)|está mal|lleva|es opcional)\b", 1.2),
        (r"\b(?:is|are|was|were|es|est|ist|era|sont)\b[^.!?\n]{0,60}\b(?:not|pas|nicht|no)\b", 0.4),
    ),
    "clarification": _cues(
        (r"\b(?:i meant|i mean|what i meant|i didn'?t mean|i was asking|i'?m asking|i was talking"
         r"|my question was|to clarify|to be clear|just to clarify|i should (?:have )?(?:said|mention(?:ed)?)"
         r"|forgot to (?:say|mention)|i'?m (?:on|using|running) |it'?s for (?:a|an|my)|i work |i have a"
         r"|i'?m a |i'?m an )", 2.4),
        (r"\b(?:is|it'?s) (?:for|about) (?:a|an|my|the)?\b|\b(?:it'?s|is) an? [\w -]+ actually\b", 1.2),
        (r"\b(?:actually (?:it'?s|i'?m)|oh,? it'?s|it'?s an? \w+ (?:file|app|project) actually)\b", 1.4),
        (r"\b(?:je voulais dire|je parlais|je pensais à|je veux dire|c'est pour)\b", 2.4),
        (r"\b(?:ich meinte|gemeint war|ich wollte|ich rede von|ich benutze|es geht um)\b", 2.4),
        (r"\b(?:me refería|quería decir|quise decir|hablaba de|uso |estoy usando)\b", 2.4),
        (r"^(?:sorry|oops|oh),?\s", 0.6),
    ),
    "complaint": _cues(
        (r"\b(?:doesn'?t|does not|didn'?t|did not|won'?t|isn'?t|not) (?:work|working|help|helpful|useful|make (?:any )?sense|do anything)\b", 2.0),
        (r"\b(?:that'?s|this is|it'?s|you'?re|so) (?:wrong|incorrect|bad|useless|terrible|awful|garbage|nonsense|generic|broken|boring|unhelpful)\b", 2.0),
        (r"^(?:wrong|boring|useless|meh|nope|no|bad|ugh|terrible|awful|cringe|wtf|what|huh|hmm+|lame|nah)\W*$", 2.4),
        (r"\b(?:useless|terrible|awful|garbage|boring|cringe|lame|nonsense|rubbish|generic|broken|meh|wtf|ugh)\b", 1.6),
        (r"\b(?:what do you mean|what are you talking about|what does that mean|no idea what you'?re"
         r"|(?:not|n'?t) making (?:any )?sense|makes? no sense|doesn'?t make (?:any )?sense|not what i (?:asked|wanted|meant)"
         r"|you (?:didn'?t|did not|haven'?t) answer|didn'?t ask|you misunderstood|not listening|you already said"
         r"|off topic|still (?:not|doesn'?t|broken|wrong)|(?:command|it|build) fails|i don'?t think (?:that'?s|so|it'?s) (?:right|correct))", 2.4),
        (r"\b(?:too much for me|way too|deleted files|not useful|just no)\b", 1.6),
        (r"\b(?:wrong|incorrect)\b", 1.0),
        (r"(?:🙄|😡|😠|👎|🤦)", 1.6),
        (r"\b(?:c'est nul|ne marche pas|ça marche pas|n'importe quoi|pas ce que j'ai demandé|ça ne va pas|c'est faux)\b", 2.4),
        (r"\b(?:funktioniert nicht|hilft (?:mir )?nicht|das ist falsch|quatsch|unsinn|geht nicht|nicht das, was)\b", 2.4),
        (r"\b(?:no me sirve|no funciona|está mal|no tiene sentido|eso no es|no es lo que)\b", 2.4),
    ),
    "retry": _cues(
        (r"\b(?:try (?:it |that |this )?again|try once more|once more|one more(?: time| try)?|again|regenerate|redo|start over"
         r"|another (?:one|version|try|shot|go)|give it another|different ones?|other options|alternatives"
         r"|\d+ more|some more|a few more|more (?:options|ideas|names)|ask again|re-?try)\b", 2.2),
        (r"^(?:more|another|again|retry|redo|next|different|others?)\W*(?:please|pls)?\W*$", 2.6),
        (r"\b(?:give me|write|try) (?:a )?(?:different|another|new)\b", 1.6),
        (r"\b(?:réessaie|recommence|encore une fois|encore|une autre|un autre|refais)\b", 2.4),
        (r"\b(?:nochmal|noch ?mal|noch einmal|versuch(?:'?s| es)? (?:noch|erneut)|erneut|eine andere|ein anderes)\b", 2.4),
        (r"\b(?:otra vez|de nuevo|inténtalo|intenta|dame otra|dame otro|otra opción|repite)\b", 2.4),
    ),
    "positive": _cues(
        (r"\b(?:thanks?|thank you|thx|ty|tysm|cheers|appreciated?|merci|danke|dankeschön|gracias|grazie)\b", 1.6),
        (r"\b(?:perfect|great|awesome|excellent|amazing|brilliant|fantastic|wonderful|beautiful|nice|cool"
         r"|love it|loved it|nailed it|spot on|exactly|lifesaver|helpful|clear|interesting|good to know"
         r"|parfait|génial|super|top|genial|perfecto|perfekt|prima|toll|excelente|riquísim[ao]|très clair)\b", 1.5),
        (r"\b(?:(?:that |it |this )?(?:worked|works|fixed it|did it|did the trick)|compiles now|got it|makes sense"
         r"|understood|^i see\b|oh right|good|love|loved|funciona|marche|funktioniert)\b", 1.3),
        (r"^(?:ok(?:ay)?|k|yes|yep|yup|sure|alright|great|nice|cool|oui|ja|sí|si|d'accord|vale|genau)\W*$", 1.8),
        (r"(?:👍|🙏|❤️|😍|🎉|👌|🙌|😊|🔥|💯)", 1.8),
    ),
    "continuation": _cues(
        (r"\b(?:continue|go on|keep going|what happens next|and then|what'?s next|tell me more|continúa|continue)\b|^(?:weiter|mach weiter|sigue)\b", 2.2),
        (r"\b(?:should i|can i|do i (?:need|have)|is it|does it|too|then|instead|in practice|at the end)\W*\??$|^(?:why|how come|pourquoi|warum|por qué)\b", 0.6),
        (r"^(?:and|so|now|then|ok(?:ay)?,? (?:and|now|so)|what about|how about|but what|et|und|y|pero)\b", 1.2),
    ),
    "new_request": _cues(
        (r"^(?:write|draft|compose|translate|summari[sz]e|explain|recommend|suggest|give me|tell me|help me"
         r"|create|generate|plan|list|find|make me|can you (?:write|suggest|help|recommend|give|explain)"
         r"|could you (?:write|help)|what'?s|what is|who|how (?:do|can|tall|many|much|long)|where|when|why"
         r"|écris|écrivez|traduis|donne|quelle?|qui|comment|schreib|übersetze|gib|was|wer|wie|escribe|escríbeme"
         r"|traduce|dame|dime|recomiéndame|cuál|qué|cómo|quién)\b", 0.6),
    ),
}
