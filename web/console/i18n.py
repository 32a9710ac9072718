"""Labels of the console: Italian by default (the source strings), English on request; numbers and dates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

ROME = ZoneInfo("Europe/Rome")
LANGUAGES = ("it", "en")
DEFAULT_LANGUAGE = "it"

# Italian source string -> English. A test checks that every string the templates and views use is here.
EN: dict[str, str] = {
    # layout and navigation
    "Console operatori": "Operator console",
    "Vai al contenuto": "Skip to content",
    "Navigazione principale": "Main navigation",
    "Cruscotto": "Dashboard",
    "Posizioni": "Positions",
    "Ricevute": "Receipts",
    "Flussi": "Flows",
    "Movimenti": "Movements",
    "Caricamenti": "Bulk uploads",
    "Giornale": "Journal",
    "Anagrafiche": "Registry",
    "Registro attività": "Audit trail",
    "Esci": "Log out",
    "Lingua": "Language",
    "Ruolo": "Role",
    "Italiano": "Italiano",
    "English": "English",
    "Pagina": "Page",
    "di": "of",
    "Precedente": "Previous",
    "Successiva": "Next",
    "Risultati": "Results",
    "Nessun risultato": "No results",
    "Cerca": "Search",
    "Filtra": "Filter",
    "Salva": "Save",
    "Annulla modifiche": "Discard changes",
    "Dettaglio": "Details",
    "Indietro": "Back",
    "Tutti": "All",
    "Sì": "Yes",
    "No": "No",
    "Apri": "Open",
    # login
    "Accesso": "Sign in",
    "Accedi": "Sign in",
    "Utente": "Username",
    "Password": "Password",
    "Credenziali non valide": "Invalid credentials",
    "Account bloccato per troppi tentativi falliti fino alle":
        "Account locked after too many failed attempts until",
    "Sessione scaduta o modulo non valido: riprova.": "Session expired or invalid form: please try again.",
    "Disconnesso": "Signed out",
    # errors
    "Accesso negato": "Access denied",
    "Non trovato": "Not found",
    "Richiesta troppo grande": "Request too large",
    "Torna al cruscotto": "Back to the dashboard",
    "Operazione non consentita": "Operation not allowed",
    # home and dashboard
    "Enti creditori": "Creditor bodies",
    "Ente": "Body",
    "Codice fiscale": "Fiscal code",
    "Denominazione": "Name",
    "Pagamenti di oggi": "Today's payments",
    "Avvisi pagati": "Notices paid",
    "Importo": "Amount",
    "Incassato oggi": "Cashed today",
    "Incassato (totale)": "Cashed (total)",
    "Rendicontato non incassato": "Reported, not cashed",
    "Pagato non rendicontato": "Paid, not reported",
    "Movimenti non spiegati": "Unexplained movements",
    "Suggerimenti da decidere": "Suggestions to decide",
    "Anomalie per etichetta": "Anomalies by label",
    "Etichetta": "Label",
    "Numero": "Count",
    "Totale": "Total",
    "Nessuna anomalia": "No anomalies",
    "Stato delle fasi": "Stage health",
    "Fase": "Stage",
    "Ultima esecuzione": "Last run",
    "Stato": "State",
    "Arretrato": "Backlog",
    "Errori (24 h)": "Failures (24 h)",
    "Fallita": "Failed",
    "Apri in Prefect": "Open in Prefect",
    "Server Prefect non configurato (PREFECT_API_URL): ultime esecuzioni non disponibili.":
        "No Prefect server configured (PREFECT_API_URL): last runs not available.",
    "Server Prefect non raggiungibile": "Prefect server not reachable",
    "Posizioni totali": "Positions",
    "Ricevute accettate": "Accepted receipts",
    "Flussi anomali": "Anomalous flows",
    "Elementi con etichetta": "Items labelled",
    "Soggetto": "Subject",
    "Riferimento": "Reference",
    "Data": "Date",
    "Debitore": "Debtor",
    "Testo": "Text",
    "Mostrati i primi": "Showing the first",
    # positions
    "Ricerca posizioni": "Find positions",
    "Numero avviso": "Notice number",
    "IUV": "IUV",
    "Debitore (codice fiscale)": "Debtor (fiscal code)",
    "Applicazione": "Application",
    "Caricate dal": "Loaded from",
    "Caricate al": "Loaded to",
    "Causale": "Reason",
    "Scadenza": "Due date",
    "Posizione": "Position",
    "Dati della posizione": "Position data",
    "Tipo pendenza": "Debt type",
    "Identificativo pendenza": "Application's position id",
    "Pubblicazione": "Publication",
    "Versione": "Version",
    "Voci": "Items",
    "Descrizione": "Description",
    "Conto di accredito": "Credited account",
    "Cronologia": "Timeline",
    "Quando": "When",
    "Evento": "Event",
    "Esito": "Outcome",
    "Avviso di pagamento (PDF)": "Payment notice (PDF)",
    "Annulla la posizione": "Annul the position",
    "Ripristina la posizione": "Restore the position",
    "Motivo (obbligatorio)": "Reason (required)",
    "Annulla": "Annul",
    "Ripristina": "Restore",
    "Posizione annullata": "Position annulled",
    "Posizione ripristinata": "Position restored",
    "Nessuna modifica": "Nothing changed",
    "Il motivo è obbligatorio": "A reason is required",
    "Motivo dello stato": "State reason",
    "Ruolo in sola lettura": "Read-only role",
    "creata": "created",
    "pubblicata": "published",
    "pubblicazione fallita": "publication failed",
    "tentativo di pagamento": "payment attempt",
    "ricevuta": "receipt",
    "rendicontata": "reported",
    "incassata": "cashed",
    "notifica all'applicazione": "notification to the application",
    "azione dell'operatore": "operator action",
    "annullata": "annulled",
    "scambio": "exchange",
    # receipts
    "Ricevuta": "Receipt",
    "Identificativo ricevuta": "Receipt id",
    "Ricevuta il": "Received on",
    "Pagata il": "Paid on",
    "PSP": "PSP",
    "Commissioni": "Fee",
    "Versante": "Payer",
    "Origine": "Source",
    "Riscossioni": "Collections",
    "Indice": "Index",
    "IUR": "IUR",
    "Ricevuta (PDF)": "Receipt (PDF)",
    "Giorno": "Day",
    # flows
    "Flussi di rendicontazione": "Reporting flows",
    "Identificativo flusso": "Flow id",
    "Data flusso": "Flow date",
    "Regolamento": "Settlement",
    "Righe": "Lines",
    "Revisione": "Revision",
    "Anomalie del flusso": "Flow anomalies",
    "Riconciliato": "Reconciled",
    "Solo righe con anomalie": "Only lines with anomalies",
    "Anomalie": "Anomalies",
    "Etichette": "Labels",
    "Righe successive": "Next lines",
    # movements
    "Movimenti di tesoreria": "Treasury movements",
    "Stato di riconciliazione": "Match status",
    "Data valuta": "Value date",
    "Ordinante": "Ordering party",
    "Causale del movimento": "Remittance",
    "Solo con suggerimenti": "Only with suggestions",
    "Suggerimenti": "Suggestions",
    "Movimento": "Movement",
    "Esito della riconciliazione": "Reconciliation outcome",
    "Flusso suggerito": "Suggested flow",
    "Punteggio": "Score",
    "Motivi": "Reasons",
    "Conferma": "Confirm",
    "Rifiuta": "Reject",
    "Deciso da": "Decided by",
    "Non è pagoPA": "Not pagoPA",
    "Segna come non pagoPA": "Mark as not pagoPA",
    "Nota (facoltativa)": "Note (optional)",
    "Abbinamento confermato: la prossima riconciliazione incassa il flusso.":
        "Match confirmed: the next reconciliation cashes the flow.",
    "Suggerimento rifiutato": "Suggestion rejected",
    "Movimento segnato come non pagoPA": "Movement marked as not pagoPA",
    "Conto": "Account",
    "Storno": "Reversal",
    "Azioni": "Actions",
    # uploads
    "Carica un tracciato": "Upload a bulk file",
    "File (CSV o JSON)": "File (CSV or JSON)",
    "Genera gli avvisi di pagamento": "Generate the payment notices",
    "Carica": "Upload",
    "Tracciato": "Bulk file",
    "Tracciati caricati": "Uploaded bulk files",
    "Righe elaborate": "Rows processed",
    "Avanzamento": "Progress",
    "Esiti": "Outcomes",
    "File degli esiti": "Outcome file",
    "Avvisi (ZIP)": "Notices (ZIP)",
    "Caricato da": "Uploaded by",
    "Caricamento avviato": "Upload started",
    "Tracciato già caricato: ecco il suo stato.": "This file was uploaded before: here is its state.",
    "Riprendi il caricamento": "Resume the load",
    "Caricamento ripreso": "Load resumed",
    "La pagina si aggiorna da sola finché il caricamento è in corso.":
        "The page refreshes itself while the load runs.",
    "Scegli un file": "Choose a file",
    "Ente: campo obbligatorio": "Body: required",
    "Il file è vuoto": "The file is empty",
    "Il file non è un tracciato leggibile": "The file is not a readable bulk file",
    "Applicazione non abilitata per l'ente": "Application not enabled for the body",
    "Avviato tramite": "Started through",
    "deployment load-positions (server Prefect)": "load-positions deployment (Prefect server)",
    "processo web (in background)": "the web process (in the background)",
    # journal
    "Giornale degli eventi": "Event journal",
    "Identificativo file": "File name",
    "Componente": "Component",
    "Operazione": "Operation",
    "Ruolo nello scambio": "Role in the exchange",
    "Durata (ms)": "Duration (ms)",
    "Chiavi": "Keys",
    "Errore": "Error",
    "Richiesta": "Request",
    "Risposta": "Response",
    "Contenuti non conservati (politica PAGOFLOW_JOURNAL_PAYLOADS)":
        "Payloads not kept (policy PAGOFLOW_JOURNAL_PAYLOADS)",
    "Indica almeno un criterio di ricerca": "Give at least one search key",
    "Scambio": "Exchange",
    # registry
    "Stazioni": "Stations",
    "IBAN": "IBANs",
    "Tipi pendenza": "Debt types",
    "Applicazioni": "Applications",
    "Operatori": "Operators",
    "Modifiche all'anagrafica": "Registry changes",
    "Nuovo": "New",
    "Modifica": "Edit",
    "Modifiche salvate": "Changes saved",
    "Creato": "Created",
    "Correggi i campi evidenziati": "Correct the highlighted fields",
    "Autore": "Author",
    "Entità": "Entity",
    "Chiave": "Key",
    "Modifiche": "Changes",
    "prima": "before",
    "dopo": "after",
    "Abilitato": "Enabled",
    "Nuova password (lasciare vuoto per non cambiarla)": "New password (leave empty to keep it)",
    "Nuova chiave API (lasciare vuoto per non cambiarla)": "New API key (leave empty to keep it)",
    "Sblocca l'accesso": "Unlock the account",
    "Bloccato fino a": "Locked until",
    "Tentativi falliti": "Failed attempts",
    "Enti abilitati": "Bodies granted",
    "Tutti gli enti": "Every body",
    "Abilitazioni (una per riga: ente oppure ente:tipo pendenza)":
        "Grants (one per line: body or body:debt type)",
    "Stazione": "Station",
    "Cifra ausiliaria": "Aux digit",
    "Codice segregazione": "Segregation code",
    "Codice applicazione": "Application code",
    "Prefisso IUV": "IUV prefix",
    "Codice CBILL": "CBILL code",
    "GLN": "GLN",
    "Settore": "Sector",
    "Indirizzo": "Address",
    "Contatti": "Contacts",
    "Rendicontazione attiva": "Reporting enabled",
    "Versione primitive": "Primitives version",
    "Riferimento password stazione": "Station password reference",
    "Riferimento chiave API": "API key reference",
    "Modalità di pubblicazione": "Publication mode",
    "Modalità di rendicontazione": "Reporting mode",
    "RPT/RT legacy": "Legacy RPT/RT",
    "Checkout": "Checkout",
    "Autenticazione in ingresso": "Inbound authentication",
    "Riferimento segreto in ingresso": "Inbound secret reference",
    "Indirizzi IP ammessi (separati da virgola)": "Allowed IP addresses (comma separated)",
    "BIC": "BIC",
    "Conto postale": "Postal account",
    "Automatico": "Automatic",
    "Conto di tesoreria": "Treasury account",
    "Codice": "Code",
    "Tassonomia": "Taxonomy",
    "Codice entrata predefinito": "Default revenue code",
    "Identificativo (idA2A)": "Id (idA2A)",
    "Principal": "Principal",
    "IUV propri": "Own IUVs",
    "URL notifiche": "Notification URL",
    "Autenticazione notifiche": "Notification authentication",
    "Utente notifiche": "Notification user",
    "Riferimento segreto notifiche": "Notification secret reference",
    "Nome e cognome": "Full name",
    "Email": "Email",
    "Intermediario": "Broker",
    "Le modifiche sono registrate nel registro delle anagrafiche con autore e data.":
        "Changes are recorded in the registry audit with author and date.",
    "Chi": "Who",
    "Cosa": "What",
    "Oggetto": "Object",
}


def translator(lang: str) -> Callable[[str], str]:
    """The function templates call as ``_()``: the Italian text itself, or its English translation."""
    if lang == "en":
        return lambda text: EN.get(text, text)
    return lambda text: text


def pick_language(requested: str | None) -> str:
    """A supported language code (Italian unless English is asked for)."""
    return requested if requested in LANGUAGES else DEFAULT_LANGUAGE


def format_eur(amount: Decimal | None, lang: str) -> str:
    """An amount in euro: ``1.234,56 €`` in Italian, ``€1,234.56`` in English."""
    if amount is None:
        return "–"
    text = f"{amount:,.2f}"
    if lang == "en":
        return f"€{text}"
    return text.replace(",", "\x00").replace(".", ",").replace("\x00", ".") + " €"


def format_datetime(value: datetime | None, lang: str) -> str:
    """A timestamp in Italian time: ``dd/mm/yyyy hh:mm:ss`` in Italian, ISO-like in English."""
    if value is None:
        return "–"
    local = value.astimezone(ROME)
    return local.strftime("%Y-%m-%d %H:%M:%S" if lang == "en" else "%d/%m/%Y %H:%M:%S")


def format_date(value: date | None, lang: str) -> str:
    """A calendar day: ``dd/mm/yyyy`` in Italian, ``yyyy-mm-dd`` in English."""
    if value is None:
        return "–"
    return value.strftime("%Y-%m-%d" if lang == "en" else "%d/%m/%Y")
