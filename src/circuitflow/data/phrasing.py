"""English phrasings of each SQL clause.

Each phrase determines its SQL exactly: a select template names the fields and the table, an
aggregate phrase names one function, a direction phrase names ASC or DESC. Placeholders are
``{table}``, ``{fields}`` and ``{field}``; in aggregate phrases the words in ``[...]`` name the
function (they become the ``eng_agg_k`` span).
"""

from __future__ import annotations

# "{fields}" is the field list ("a, b and c"); the ORDER BY phrase, if any, follows the sentence.
SELECT_TEMPLATES = (
    "Show me {fields} from {table}",
    "Show me the {fields} from the {table} table",
    "From {table} get {fields}",
    "Get {fields} from {table}",
    "List {fields} from {table}",
    "Display {fields} from {table}",
    "What are the {fields} in {table}",
    "Return {fields} from {table}",
    "Give me {fields} from {table}",
    "Find {fields} in {table}",
    "Retrieve {fields} from {table}",
    "Fetch {fields} from {table}",
    "Pull up {fields} from {table}",
    "I need {fields} from {table}",
    "I want to see {fields} from {table}",
    "Extract {fields} from {table}",
    "Out of {table}, show {fields}",
    "In {table}, list {fields}",
    "From the {table} table, give me {fields}",
    "Using {table}, display {fields}",
    "Can you get me {fields} from {table}",
    "Please list {fields} from {table}",
    "Look up {fields} in {table}",
    "Output {fields} from {table}",
    "Search {table} for {fields}",
    "Tell me {fields} in {table}",
    "Bring up {fields} from {table}",
)

AGGREGATE_PHRASES = {
    "SUM": (
        "[total] {field}",
        "[sum of] {field}",
        "[combined] {field}",
        "[overall] {field}",
        "{field} [total]",
        "[cumulative] {field}",
    ),
    "AVG": (
        "[average] {field}",
        "[mean] {field}",
        "[typical] {field}",
        "[mean value of] {field}",
        "{field} [on average]",
    ),
    "MIN": (
        "[minimum] {field}",
        "[lowest] {field}",
        "[smallest] {field}",
        "[least] {field}",
        "[minimal] {field}",
    ),
    "MAX": (
        "[maximum] {field}",
        "[highest] {field}",
        "[largest] {field}",
        "[greatest] {field}",
        "[biggest] {field}",
        "[peak] {field}",
    ),
    "COUNT": (
        "[number of] {field}",
        "[count of] {field}",
        "[tally of] {field}",
        "{field} [count]",
        "[number of entries for] {field}",
    ),
}

# Introduce the ORDER BY items, after the select sentence:
# "... sorted by price descending, then name ascending".
ORDER_LEADS = (
    "sorted by",
    "ordered by",
    "sort by",
    "order by",
    "arranged by",
    "ranked by",
    "in order of",
    "organized by",
    "with results sorted by",
    "with rows ordered by",
    "sorting by",
    "ordering by",
    "listed by",
    "sequenced by",
    "arranged according to",
    "sorted according to",
    "ordered according to",
    "put in order of",
    "sorted using",
    "ordered using",
    "ranking by",
    "sort the results by",
    "order the results by",
)

ORDER_ITEM_SEPARATOR = ", then "

# Each ORDER BY item reads "{field} {direction phrase}".
DIRECTION_PHRASES = {
    "ASC": (
        "ascending",
        "in ascending order",
        "from lowest to highest",
        "from smallest to largest",
        "from low to high",
        "in increasing order",
        "smallest first",
        "lowest first",
        "least first",
        "from least to most",
        "in ascending sequence",
        "increasing",
    ),
    "DESC": (
        "descending",
        "in descending order",
        "from highest to lowest",
        "from largest to smallest",
        "from high to low",
        "in decreasing order",
        "largest first",
        "highest first",
        "most first",
        "from most to least",
        "in descending sequence",
        "decreasing",
    ),
}


def list_separators(n_items: int) -> list[str]:
    """The string to put before each of ``n_items`` items so that the list reads "a, b and c"."""
    return [""] + [", "] * (n_items - 2) + [" and "] * (n_items > 1)
