"""The labeler's vocabulary: mention patterns of the 14 CheXpert observations and the cue phrases.

Kept apart from the matching logic so that a site can read, extend or audit the rules in one
place. Every entry is a regular-expression fragment matched case-insensitively on word boundaries.
The mention lists follow the spirit of the CheXpert labeler's phrase files (Irvin et al., 2019) and
were checked against the IU X-ray reports; they are written here, not copied.

Attribute observations (Cardiomegaly, Enlarged Cardiomediastinum) are asserted by an anatomy word
plus a modifier ("the heart is enlarged", "normal heart size"): ``anatomy`` lists the anatomy,
``abnormal`` the modifiers that make it a positive mention, ``borderline`` those that make it
uncertain; the nearest modifier wins and a "normal" one makes it a negative mention.
"""

from __future__ import annotations

CHEXPERT_CLASSES = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]
NO_FINDING = "No Finding"

# Direct mentions: the phrase itself names the observation.
MENTIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"widen(?:ed|ing) (?:of the )?(?:superior )?mediastinum", r"mediastinal (?:widening|enlargement)",
        r"enlarged (?:cardio)?mediastin\w*", r"cardiomediastinal enlargement", r"mediastinal prominence",
    ],
    "Cardiomegaly": [
        r"cardiomegaly", r"cardiac enlargement", r"enlarge(?:d|ment of the) (?:heart|cardiac (?:silhouette|shadow))",
        r"enlarged cardiac (?:silhouette|shadow|size)", r"enlarged heart(?: size)?", r"cardiomyopathy",
    ],
    "Lung Lesion": [
        r"mass(?:es)?", r"nodules?", r"nodular (?:densit(?:y|ies)|opacit(?:y|ies)|opacification|lesions?)",
        r"(?:lung|pulmonary|cavitary|cavitating|parenchymal) lesions?", r"tumou?rs?", r"neoplasms?", r"carcinoma",
        r"metasta(?:sis|ses|tic disease)", r"lump",
    ],
    "Lung Opacity": [
        r"(?<!nodular )opaci(?:ty|ties|fication|fications|fied)", r"infiltrat(?:e|es|ion|ive)",
        r"airspace (?:disease|process)",
        r"air[- ]space (?:disease|process)", r"increased (?:densit(?:y|ies)|markings?)",
        r"(?:interstitial|reticular|reticulonodular) (?:markings?|pattern|opacit(?:y|ies)|changes?|thickening)",
        r"reticulation", r"ground[- ]glass", r"haz(?:y|iness)",
        r"(?:parenchymal|pulmonary|lung|pleural[- ]parenchymal) "
        r"scar(?:ring|s)?", r"scar(?:ring)?", r"peribronchial (?:thickening|cuffing)", r"bronchial wall thickening",
        r"fibrosis", r"fibrotic changes?",
    ],
    "Edema": [
        r"edema", r"oedema", r"(?:vascular|pulmonary|venous) congestion", r"heart failure", r"\bchf",
        r"cephalization", r"kerley b? ?lines", r"fluid overload",
        r"indistinct(?:ness of the)? (?:pulmonary )?vasculature",
    ],
    "Consolidation": [r"consolidat(?:ion|ions|ive|ed)", r"airspace consolidation"],
    "Pneumonia": [r"pneumonias?", r"bronchopneumonia", r"pneumonitis", r"infect(?:ion|ions|ious process)"],
    "Atelectasis": [
        r"atelecta(?:sis|ses|tic)", r"(?:lobar|lung|lobe|segmental|subsegmental) collapse",
        r"collapse of the (?:\w+ ){0,3}(?:lung|lobe)", r"collapsed (?:lung|lobe)", r"volume loss",
    ],
    "Pneumothorax": [r"pneumothora(?:x|ces)", r"\bptx", r"hydropneumothorax"],
    "Pleural Effusion": [
        r"pleural effusions?", r"(?<!pericardial )(?<!joint )effusions?", r"pleural fluid", r"hydrothorax",
        r"hydropneumothorax",
        r"fluid in the (?:\w+ ){0,2}pleural", r"blunt(?:ing|ed) of the (?:\w+ ){0,2}costophrenic",
        r"costophrenic (?:angle |sulcus )?blunting",
    ],
    "Pleural Other": [
        r"pleural (?:thickening|plaques?|scar(?:ring)?|calcifications?|fibrosis)", r"fibrothorax",
        r"apical (?:pleural )?(?:cap|capping|thickening)", r"pleural[- ]parenchymal (?:scar(?:ring)?|thickening)",
    ],
    "Fracture": [r"fractur(?:e|es|ed)", r"\bfx"],
    "Support Devices": [
        r"(?:central venous|central|picc|venous|arterial|swan[- ]ganz|jugular|subclavian|dialysis|midline) "
        r"(?:line|lines|catheter|catheters)", r"catheters?", r"picc",
        r"(?:endotracheal|et|nasogastric|ng|feeding|chest|enteric|orogastric|og|tracheostomy|dobhoff|gastric|"
        r"thoracostomy) tubes?", r"tracheostomy", r"pacemakers?", r"pacers?", r"aicd", r"defibrillators?",
        r"\bicd", r"(?:power ?|chest |mediport |port[- ]?a[- ]?)(?:port|cath)", r"stents?",
        r"sternotomy (?:wires?|sutures?)", r"sternal (?:wires?|sutures?)", r"(?:median |midline )?sternotomy",
        r"(?:surgical|vascular|cholecystectomy) clips", r"(?:orthopedic|surgical|spinal|fixation) hardware",
        r"prosthe(?:sis|tic valve|tic)", r"valve replacement", r"(?:pacer|pacemaker|cardiac) leads?",
        r"loop recorder", r"drains?", r"devices?", r"wires?",
    ],
}

# Attribute observations: anatomy + modifier.
ATTRIBUTES: dict[str, dict[str, list[str]]] = {
    "Cardiomegaly": {
        "anatomy": [r"heart(?: size| silhouette| shadow| contours?)?",
                    r"cardiac(?: size| silhouette| shadow| contours?| diameter)"],
    },
    "Enlarged Cardiomediastinum": {
        "anatomy": [r"cardiomediastinal(?: silhouette| contours?| shadow| structures| size| width)?",
                    r"mediastin(?:um|al)(?: silhouette| contours?| width| structures)?"],
    },
}
ABNORMAL_MODIFIERS = [r"enlarg\w*", r"increas\w*", r"large", r"prominen\w*", r"widen\w*", r"wide", r"big"]
BORDERLINE_MODIFIERS = [r"borderline", r"upper limits? of normal", r"top(?:[- ]| of )normal", r"high[- ]normal",
                        r"upper normal"]
# "stable heart size" says nothing about the size: a neutral modifier claims the anatomy word when it is
# nearer than a normal/abnormal one that sits across a comma ("Heart normal, stable mediastinal contours").
NEUTRAL_MODIFIERS = [r"stable", r"unchanged", r"similar", r"grossly", r"again"]
NORMAL_MODIFIERS = [r"normal", r"unremarkable", r"within normal limits", r"not enlarged", r"negative"]

# Cues. "pre" cues precede the mention ("no effusion"), "post" cues follow it ("effusion has resolved").
UNCERTAIN_BEFORE_NEGATION = [  # contain a negation word but mean "maybe": checked first
    r"(?:cannot|can ?not|can't|could not|unable to|difficult to|not possible to|may not) (?:be )?"
    r"(?:entirely |completely |"
    r"definitely |totally |fully )?(?:exclude[ds]?|excluded|rule[ds]? out|ruled out)",
    r"not (?:be )?(?:entirely |completely |definitely |totally |fully )?(?:excluded|ruled out)",
    r"(?:is|are) not (?:entirely |completely )?(?:excluded|ruled out)", r"no definite evidence to exclude",
]
PSEUDO_NEGATIONS = [  # look like negations, are not: "no change in the effusion" asserts the effusion
    r"no (?:significant |appreciable |substantial |interval |definite )?(?:change|changes|increase|decrease|"
    r"progression|worsening|improvement)", r"not (?:significantly |substantially )?(?:changed|increased|decreased|"
    r"improved|worsened)", r"without (?:significant |interval )?(?:change|changes)", r"not only", r"no further change",
    r"gram[- ]negative", r"no longer changing",
]
NEGATION_PRE = [
    r"no", r"not", r"without", r"negative for", r"free of", r"clear of", r"absen(?:ce|t) of", r"no evidence of",
    r"no (?:radiographic |imaging |definite |acute |focal |convincing )*(?:evidence|signs?|findings?) "
    r"(?:of|for|to suggest)",
    r"resolution of", r"resolved", r"interval resolution of", r"interval clearing of", r"clearing of",
    r"removal of", r"no longer", r"neither", r"nor", r"none", r"never", r"rather than", r"ruled out for",
    r"disappearance of",
]
NEGATION_POST = [
    r"(?:is|are|was|were)? ?not (?:clearly |definitely |well )?(?:seen|identified|present|visualized|visualised|"
    r"demonstrated|evident|appreciated|noted|detected|visible|apparent|shown|observed)",
    r"(?:has|have|had)? ?(?:since |now |completely |nearly |almost )?(?:resolved|cleared|disappeared|been removed)",
    r"(?:is|are|has been|have been)? ?(?:removed|absent|gone|excluded)",
    r"no longer (?:seen|present|visualized|evident)",
    r"(?:is|are) negative", r"(?:has|have) been ruled out",
]
UNCERTAIN_PRE = [
    r"possibl[ey]", r"probabl[ey]", r"questionabl[ey]", r"question of", r"likely", r"may", r"might", r"could",
    r"suspect(?:ed)?", r"suspicious (?:for|of)", r"suggest(?:s|ed|ing|ive)?(?: of)?", r"concern(?:ing)? (?:for|of)",
    r"(?:consider|considered|consideration of)", r"equivocal",
    r"presum(?:ed|ably|ptive)",
    r"differential(?: diagnosis)?(?: includes?| of)?", r"versus", r"vs\.?", r"r/o", r"rule out", r"to exclude",
    r"cannot distinguish", r"correlat\w+ (?:for|with)", r"evaluate for", r"assess for", r"worrisome for",
    r"not certain", r"uncertain", r"vague",
]
UNCERTAIN_POST = [
    r"(?:is|are|was|were) (?:suspected|possible|questioned|likely|not certain|uncertain|favou?red|considered)",
    r"suspected", r"(?:may|might|could) (?:be|also be) (?:present|seen|noted|identified|developing)", r"versus",
    r"vs\.?", r"or not",
    r"(?:cannot|can ?not|can't) be (?:entirely )?(?:excluded|ruled out)", r"\?",
]
# Hedges that reach only the next few words: "borderline cardiomegaly", "atelectasis or scarring".
UNCERTAIN_SHORT = [r"borderline", r"or"]
SHORT_WINDOW = 2

# Scope of a cue stops at these (and at the sentence end).
TERMINATORS = [
    r"but", r"however", r"although", r"though", r"except(?: for)?", r"apart from", r"aside from", r"whereas",
    r"while", r"yet", r"which", r"there (?:is|are|has been|have been|was|were)", r"otherwise", r"other than",
    r"with the exception of", r";", r":",
]
