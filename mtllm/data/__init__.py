"""Data that every stage reads: languages (FLORES-200 codes), unlabelled texts, collation, multiple-choice spans."""
