"""English phrasings of each SQL clause.

Each phrase determines its SQL exactly: a select template names the fields and the table (a
join template both tables), an aggregate phrase names one function, a direction phrase names ASC
or DESC, a condition phrase names one comparison. Placeholders are ``{table}``, ``{table_2}``,
``{fields}``, ``{field}`` and ``{value}``; in aggregate and condition phrases the words in
``[...]`` name the function or the comparison (they become the ``eng_agg_k`` or
``eng_where_op_k`` span).
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

# CS5: "{table}" is the FROM table, "{table_2}" the joined one.
JOIN_TEMPLATES = (
    "Show me {fields} from {table} joined with {table_2}",
    "Show me the {fields} from the {table} table joined with the {table_2} table",
    "From {table} joined with {table_2} get {fields}",
    "Join {table} with {table_2} and list {fields}",
    "Combine {table} with {table_2} to show {fields}",
    "Get {fields} by joining {table} with {table_2}",
    "List {fields} from {table} combined with {table_2}",
    "Display {fields} from {table} matched to {table_2}",
    "What are the {fields} in {table} linked to {table_2}",
    "Return {fields} from {table} together with {table_2}",
    "Give me {fields} from {table} and the matching {table_2}",
    "Find {fields} in {table} paired with {table_2}",
    "Retrieve {fields} from {table} joined to {table_2}",
    "Fetch {fields} across {table} and {table_2}",
    "Using {table} and {table_2}, display {fields}",
    "Link {table} to {table_2} and show {fields}",
    "Match {table} with {table_2} and return {fields}",
    "I need {fields} from {table} joined with {table_2}",
    "Pull up {fields} from {table} connected to {table_2}",
    "Merge {table} with {table_2} and output {fields}",
    "With {table_2} joined onto {table}, show {fields}",
    "For {table} and their {table_2}, list {fields}",
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


# Introduce the WHERE conditions, after the select sentence and before the ORDER BY phrase:
# "... where price is above 100 and name contains 'an'". Each condition reads
# "{field} {condition phrase}"; conditions are joined by " and " / " or ".
WHERE_LEADS = (
    "where",
    "whose",
    "for which",
    "in which",
    "only where",
    "if",
    "when",
    "provided that",
    "as long as",
    "but only when",
    "such that",
    "on condition that",
    "keeping only rows where",
    "for rows where",
    "for those whose",
    "limited to those where",
    "restricted to cases where",
    "filtering for rows where",
    "in cases where",
    "for entries whose",
    "considering only rows where",
)

# Per value kind (vocabulary.value_kind), per comparison: the phrases that say it. Numbers and
# dates are written bare, text quoted ('london'), booleans as true/false.
CONDITION_PHRASES = {
    "number": {
        "=": ("is [equal to] {value}", "[equals] {value}", "is [exactly] {value}", "[is] {value}"),
        "!=": (
            "is [not equal to] {value}", "[is not] {value}", "[differs from] {value}",
            "is [other than] {value}", "[does not equal] {value}",
        ),
        "<": (
            "is [below] {value}", "is [less than] {value}", "is [under] {value}",
            "is [lower than] {value}", "is [smaller than] {value}",
        ),
        ">": (
            "is [above] {value}", "is [greater than] {value}", "is [more than] {value}",
            "is [over] {value}", "[exceeds] {value}", "is [higher than] {value}",
        ),
        "<=": (
            "is [at most] {value}", "is [no more than] {value}",
            "is [less than or equal to] {value}", "is [not above] {value}",
            "[does not exceed] {value}",
        ),
        ">=": (
            "is [at least] {value}", "is [no less than] {value}",
            "is [greater than or equal to] {value}", "is [not below] {value}",
        ),
    },
    "date": {
        "=": ("is [on] {value}", "[is] {value}", "[falls on] {value}", "is [exactly] {value}"),
        "!=": ("is [not on] {value}", "[is not] {value}", "[does not fall on] {value}"),
        "<": (
            "is [before] {value}", "is [earlier than] {value}", "[precedes] {value}",
            "[comes before] {value}",
        ),
        ">": (
            "is [after] {value}", "is [later than] {value}", "[follows] {value}",
            "[comes after] {value}",
        ),
        "<=": ("is [on or before] {value}", "is [no later than] {value}", "is [not after] {value}"),
        ">=": (
            "is [on or after] {value}", "is [no earlier than] {value}", "is [not before] {value}",
        ),
    },
    "text": {
        "=": (
            "[is] {value}", "is [equal to] {value}", "[equals] {value}",
            "is [identical to] {value}",
            "is [exactly] {value}",
        ),
        "!=": (
            "[is not] {value}", "is [not equal to] {value}", "[differs from] {value}",
            "[does not equal] {value}", "is [other than] {value}",
        ),
        "contains": ("[contains] {value}", "[includes] {value}", "[mentions] {value}"),
        "starts with": ("[starts with] {value}", "[begins with] {value}"),
        "ends with": ("[ends with] {value}", "[finishes with] {value}"),
    },
    "boolean": {
        "=": ("[is] {value}", "is [equal to] {value}", "[equals] {value}", "is [marked] {value}"),
    },
}


def list_separators(n_items: int) -> list[str]:
    """The string to put before each of ``n_items`` items so that the list reads "a, b and c"."""
    return [""] + [", "] * (n_items - 2) + [" and "] * (n_items > 1)
