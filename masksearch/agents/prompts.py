"""The teacher roles' prompts, in one place so they are easy to find and change.

Each role answers in a few XML-ish tags that :mod:`masksearch.agents.teacher` parses:

* Planner  -> ``<think>…</think><query>first sub-query</query>``
* Rewriter -> ``<queries>one search query per line</queries>``
* Observer -> ``<think>…</think>`` then one of ``<answer>…</answer>``, ``<next>sub-query</next>``
  or ``<replan>why the plan fails</replan>``
* Judge    -> reasoning, then a last line ``Verdict: CORRECT`` or ``Verdict: INCORRECT``

Tags instead of JSON: small models close a tag far more often than they produce valid JSON, and
the parser can still read a reply whose final tag was cut by a token limit.
"""

from __future__ import annotations

MULTI_SPAN_NOTE = (
    "If the question has several [mask] blanks, the answer is the missing spans in order, "
    "separated by ' | '."
)

PLANNER_SYSTEM = (
    "You are the Planner of a research team that answers questions by searching a knowledge "
    "source (Wikipedia passages). Read the question, think about which facts are needed, and "
    "write the FIRST sub-question to search for.\n"
    "Reply exactly in this format:\n"
    "<think>your reasoning, one or two sentences</think>\n"
    "<query>a short sub-question or search phrase</query>"
)

PLANNER_REPLAN = (
    "The previous plan did not work. Searches so far:\n{history}\n"
    "Observer's note: {feedback}\n"
    "Make a new plan: a different angle, different keywords."
)

REWRITER_SYSTEM = (
    "You are the Rewriter of a research team. Turn the sub-query into {n} different search "
    "engine queries that could find the passage with the answer: synonyms, key entities, "
    "the likely wording of the passage.\n"
    "Reply exactly in this format, one query per line:\n"
    "<queries>\nquery one\nquery two\nquery three\n</queries>"
)

OBSERVER_SYSTEM = (
    "You are the Observer of a research team. You read the question, the team's reasoning so far "
    "and the latest search results, and decide what happens next:\n"
    "- if the results contain the answer, give it: <answer>short answer</answer>\n"
    "- if another fact is needed, ask for it: <next>new search words</next>\n"
    "- if the searches are going nowhere, send the work back to the Planner: "
    "<replan>why the plan fails</replan>\n"
    "Always start with <think>your reasoning</think>. The answer is short: a name, a date, a "
    "number or a phrase, no explanation. " + MULTI_SPAN_NOTE
)

# The one LLM judge (teacher acceptance, the GRPO judge reward and `eval --judge` all use it);
# its reply is read by :func:`masksearch.agents.judge.parse_verdict`.
JUDGE_SYSTEM = (
    "You grade answers to questions. You are given a question, the gold answer(s) and a predicted "
    "answer. The prediction is correct when it states the same fact as a gold answer (wording, "
    "abbreviations and extra detail that does not contradict it are fine). It is incorrect when it "
    "is wrong, contradicts a gold answer, is missing, or hedges between several answers."
)

JUDGE_USER = (
    "Question: {question}\n"
    "Gold answer{plural}: {gold}\n"
    "{match_note}"
    "Predicted answer: {prediction}\n\n"
    "Think in one or two sentences, then write the last line exactly as\n"
    "Verdict: CORRECT\nor\nVerdict: INCORRECT"
)

JUDGE_MATCH_NOTES = {
    "any": "(The gold answers are alternatives: matching one of them is enough.)\n",
    "all": "(All of the gold strings are required, in any order; the prediction is correct only if it "
           "gives every one of them.)\n",
    "ordered": "(All of the gold strings are required, in this order; the prediction is correct only if "
               "it gives every one of them, in order.)\n",
}

RETRY_NOTE = (
    "Your reply could not be read ({reason}). Reply again, exactly in the required format."
)


# ------------------------------------------------------------------ structured (JSON schema) mode
# Where the backend constrains decoding to a JSON schema (llama.cpp, vLLM, OpenAI, DashScope), the
# roles answer in the schemas of masksearch.agents.schemas; these system prompts describe the same
# decisions without tags (the schema itself enforces the shape). The role names stay the first
# words, as in the tag prompts.
QUERY_RULES = (
    "A search query is 3 to 10 key words: the names, places, dates and topic words that the "
    "passage with the answer contains. Never copy a whole sentence, never write [mask] or instructions."
)

# llama.cpp and vLLM constrain the reply to the schema but do not show the schema to the model
# (OpenAI's structured outputs do): each prompt names every field and says what goes in it, in
# words only. Without the names the 1.5B model, forced to open ``{"thought": "``, wrote
# ``"thought | thought | thought"`` and ``"query": "query"``; with a JSON template the 0.5B model
# copied the template's placeholder values.
PLANNER_JSON = (
    "You are the Planner of a research team that answers questions by searching Wikipedia "
    "passages. Work out which fact is missing and write the first search query for it.\n"
    "If the question is a passage with [mask] blanks, it was cut from a Wikipedia passage that the "
    "search engine holds, and the query must find it: the name the passage is about and 2 to 6 rare "
    "words, names or numbers that stand next to a blank, copied exactly as they are written in the "
    "passage. " + QUERY_RULES + "\n"
    "Reply with a JSON object of two fields: thought, one sentence in your own words that names the "
    "missing fact and why your words will find it; query, the search query."
)

REWRITER_JSON = (
    "You are the Rewriter of a research team. Give {n} other search queries that could find the "
    "passage with the answer: the key entities, synonyms, other wordings. " + QUERY_RULES + "\n"
    "Reply with a JSON object of one field: queries, the list of your {n} search queries, each "
    "different from the sub-query and from each other."
)

OBSERVER_JSON = (
    "You are the Observer of a research team. Read the question, the reasoning so far and the "
    "documents found, then decide:\n"
    "answer: the documents contain the answer.\n"
    "next: another fact is needed; text is a new search query of 3 to 10 key words, not tried before.\n"
    "replan: the searches are going nowhere; text says why.\n"
    "An answer is short, copied from a document: a name, a date, a number or a phrase.\n"
    "For a passage with [mask] blanks: look for the document with the same sentences. For each "
    "blank, find the words written just before and after it in that document and copy, word for "
    "word, only what stands between them; put one string per blank, in order, in blanks (text may stay "
    "empty). If no document has the passage's sentences, do not guess: search again with other "
    "words of the passage.\n"
    "Reply with a JSON object: thought, one sentence in your own words on what the documents show "
    "(which document has the passage, or what is still missing); decision, one of answer, next, "
    "replan; text, the answer, the new query or the reason"
)
# the observer's last sentence, finished for the schema it is given (blanks only for RAMP)
OBSERVER_JSON_END = {False: ".", True: "; blanks, the list of the blanks' texts, one per blank, in order."}

UNGROUNDED_NOTE = (
    "That answer is not written in the documents found. Copy each blank's text word for word from "
    "the document that has the passage's sentences, or, if none has them, choose next and search "
    "with other words of the passage."
)

EMPTY_NEXT_NOTE = (
    "A next decision needs text: the new search query, 3 to 10 key words not tried before. If the "
    "documents hold the answer, choose answer instead. Reply again."
)

OUT_OF_CONTEXT_NOTE = (
    "Those words are not the blank's text: {where}. Find those words in the document that has the "
    "passage's sentences and copy only what stands between them, or, if no document has them, "
    "choose next and search with other words of the passage."
)

# The planner's note when the observer's answer was refused twice and turns remain: the run searches
# again instead of ending malformed (a wrong span means the right passage was not found).
REFUSED_NOTE = (
    "The documents found do not hold the passage's sentences, so no answer could be read from them "
    "({reason}). Search for other rare words, names or numbers of the passage."
)

DEGENERATE_NOTE = {
    "empty": "the query is empty",
    "too_short": "the query is too short",
    "mask_token": "the query contains [mask]",
    "prompt_echo": "the query repeats words of these instructions instead of naming what to find",
    "copy": "the query copies a whole sentence of the question",
}
